"""The OpenAI API surface: request validation, response objects, route handlers."""
