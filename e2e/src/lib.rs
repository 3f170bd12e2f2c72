//! End-to-end tests against a real API server (built in the harness issue).
