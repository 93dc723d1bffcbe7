"""Errors a user can cause: each carries one sentence that says what to do."""


class UserError(Exception):
    """A problem with the user's input or machine, reported without a traceback."""


class VariantUnavailable(Exception):
    """A variant cannot run here (no CUDA, a provider or API missing); the message is the skip reason."""
