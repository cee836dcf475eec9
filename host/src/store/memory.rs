//! In-memory backend (being written by the lead).
