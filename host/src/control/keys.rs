//! API keys: generated at random, stored only as hashes.

use sha2::{Digest, Sha256};

/// Hex SHA-256 of a key: keys are long random secrets, so a fast hash is
/// enough to make a stolen database useless for authentication.
pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Generates a key: `bb_` + 32 random bytes in hex.
pub fn generate_key() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("bb_{hex}")
}
