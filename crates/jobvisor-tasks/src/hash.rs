//! `"hash"`: SHA-256 of a file.

use jobvisor_proto::hex;
use std::fs::File;

use jobvisor_worker::{Ctx, Task, TaskError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chunks::for_each_chunk;

/// `"hash"`: streams a file through SHA-256.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hash;

/// Input of [`struct@Hash`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashInput {
    /// The file to hash, as the worker process sees it (relative paths are
    /// relative to the worker's working directory).
    pub path: String,
}

/// Output of [`struct@Hash`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashOutput {
    /// The digest as 64 lowercase hex digits.
    pub sha256: String,
    /// How many bytes were hashed.
    pub bytes: u64,
}

impl Task for Hash {
    const NAME: &'static str = "hash";
    type Input = HashInput;
    type Output = HashOutput;

    fn run(&self, input: HashInput, ctx: &mut Ctx<'_>) -> Result<HashOutput, TaskError> {
        let path = &input.path;
        let mut file =
            File::open(path).map_err(|e| TaskError::msg(format!("cannot open {path:?}: {e}")))?;
        // Only used for progress reports, so a failure here is not worth failing for.
        let total = file.metadata().map_or(0, |m| m.len());
        let mut hasher = Sha256::new();
        let bytes = for_each_chunk(&mut file, &format!("{path:?}"), total, ctx, |chunk| {
            hasher.update(chunk);
            Ok(())
        })?;
        Ok(HashOutput {
            sha256: hex(&hasher.finalize()),
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobvisor_worker::run_detached;
    use std::time::Duration;

    fn hash_of(content: &[u8]) -> HashOutput {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, content).expect("write");
        let input = HashInput {
            path: path.to_string_lossy().into_owned(),
        };
        run_detached(&Hash, input, None).expect("hash")
    }

    #[test]
    fn known_digest_of_abc() {
        let out = hash_of(b"abc");
        assert_eq!(
            out.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(out.bytes, 3);
    }

    #[test]
    fn known_digest_of_empty_file() {
        let out = hash_of(b"");
        assert_eq!(
            out.sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(out.bytes, 0);
    }

    #[test]
    fn multi_chunk_file_matches_one_shot_digest() {
        // Not a multiple of the chunk size, to cover the short last read.
        let content: Vec<u8> = (0..(3 * crate::chunks::CHUNK_BYTES + 123))
            .map(|i| (i % 251) as u8)
            .collect();
        let out = hash_of(&content);
        assert_eq!(out.sha256, hex(&Sha256::digest(&content)));
        assert_eq!(out.bytes, content.len() as u64);
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no-such-file");
        let path = path.to_string_lossy().into_owned();
        let err = run_detached(&Hash, HashInput { path: path.clone() }, None)
            .expect_err("hashing a missing file must fail");
        assert!(!err.is_cancelled());
        assert!(err.to_string().contains(&path), "message: {err}");
    }

    #[test]
    fn expired_deadline_cancels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").expect("write");
        let input = HashInput {
            path: path.to_string_lossy().into_owned(),
        };
        let err = run_detached(&Hash, input, Some(Duration::ZERO)).expect_err("must be cancelled");
        assert!(err.is_cancelled(), "{err:?}");
    }
}
