//! The rgfs distributed lock manager (issue 3 delivers the engine, protocol, daemon and client).
