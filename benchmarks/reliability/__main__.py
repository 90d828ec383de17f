from benchmarks.reliability.run import main

raise SystemExit(main())
