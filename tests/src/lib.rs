//! Shared helpers for the cross-component integration tests in `tests/tests/`.
