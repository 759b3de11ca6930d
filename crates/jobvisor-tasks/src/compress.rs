//! `"compress"`: zstd-compresses a file into another, atomically.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use jobvisor_worker::{Ctx, Task, TaskError};
use serde::{Deserialize, Serialize};

use crate::chunks::for_each_chunk;
use crate::tmpfile::{self, TempFile};

/// `"compress"`: streams `src` through a zstd encoder into `dst`.
///
/// The output is written to a temporary file next to `dst` and renamed over it
/// once complete, so `dst` is either untouched or the whole result, never a
/// partial file. The temporary file is removed on any error or cancellation.
/// The output takes the source's mode (0600 if it cannot be read), never a
/// wider one, and the directory is fsynced after the rename.
#[derive(Debug, Clone, Copy, Default)]
pub struct Compress;

/// Input of [`Compress`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressInput {
    /// The file to read.
    pub src: String,
    /// Where to put the compressed file; replaced if it exists. Its directory
    /// must exist.
    pub dst: String,
    /// zstd level, 1 to 22; 0 means zstd's default (3).
    pub level: i32,
}

/// Output of [`Compress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressOutput {
    /// Bytes read from `src`.
    pub bytes_in: u64,
    /// Size of the compressed `dst`.
    pub bytes_out: u64,
}

/// zstd's own default, spelled out so that 0 means the same thing whatever
/// the linked libzstd thinks.
const DEFAULT_LEVEL: i32 = 3;
const MAX_LEVEL: i32 = 22;

impl Task for Compress {
    const NAME: &'static str = "compress";
    type Input = CompressInput;
    type Output = CompressOutput;

    fn run(&self, input: CompressInput, ctx: &mut Ctx<'_>) -> Result<CompressOutput, TaskError> {
        let level = match input.level {
            0 => DEFAULT_LEVEL,
            l @ 1..=MAX_LEVEL => l,
            l => {
                return Err(TaskError::bad_input(format!(
                    "zstd level {l} is out of range (1..={MAX_LEVEL}, or 0 for the default)"
                )))
            }
        };
        let dst = Path::new(&input.dst);
        let Some(name) = dst.file_name() else {
            return Err(TaskError::bad_input(format!(
                "destination {:?} does not name a file",
                input.dst
            )));
        };
        let src_name = format!("{:?}", input.src);
        let mut src = File::open(&input.src)
            .map_err(|e| TaskError::msg(format!("cannot open {src_name}: {e}")))?;
        // Only used for progress reports.
        let total = src.metadata().map_or(0, |m| m.len());

        let dir = match dst.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // The output holds the source's bytes: never readable by more people
        // than the source (0600 when its mode cannot be read).
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            src.metadata()
                .map_or(0o600, |m| m.permissions().mode() & 0o777)
        };
        let mut tmp = TempFile::create(dir, name, mode)?;
        let write_err = tmp.write_err();
        let file = tmp.take_file()?;
        let mut enc = zstd::stream::write::Encoder::new(file, level).map_err(&write_err)?;
        let bytes_in = for_each_chunk(&mut src, &src_name, total, ctx, |chunk| {
            enc.write_all(chunk).map_err(&write_err)
        })?;
        let file = enc.finish().map_err(&write_err)?;
        // Flush to disk before the rename, so a crash cannot leave a `dst`
        // that is renamed but empty.
        file.sync_all().map_err(&write_err)?;
        let bytes_out = file.metadata().map_err(&write_err)?.len();
        drop(file);
        if ctx.is_cancelled() {
            return Err(TaskError::cancelled());
        }
        fs::rename(&tmp.path, dst).map_err(|e| tmp.rename_err(dst, &e))?;
        tmp.persisted = true;
        // The rename itself is durable only once the directory is synced.
        tmpfile::sync_dir(dir)?;
        Ok(CompressOutput {
            bytes_in,
            bytes_out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobvisor_worker::run_detached;
    use std::time::Duration;

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Compresses `src` into `dst` outside any pool, without a deadline.
    fn compress(src: &Path, dst: &Path, level: i32) -> Result<CompressOutput, TaskError> {
        let input = CompressInput {
            src: s(src),
            dst: s(dst),
            level,
        };
        run_detached(&Compress, input, None)
    }

    fn s(p: &Path) -> String {
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn the_output_is_never_readable_by_more_people_than_the_source() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("secret");
        fs::write(&src, b"the secret").expect("write");
        fs::set_permissions(&src, fs::Permissions::from_mode(0o600)).expect("chmod");
        let dst = dir.path().join("secret.zst");
        compress(&src, &dst, 0).expect("compress");
        assert_eq!(mode(&dst), 0o600, "a new .zst");
        compress(&src, &src, 0).expect("compress in place");
        assert_eq!(mode(&src), 0o600, "dst == src");
    }

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("in");
        let dst = dir.path().join("out.zst");
        let content: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 1000).to_le_bytes())
            .collect();
        fs::write(&src, &content).expect("write");
        let out = compress(&src, &dst, 0).expect("compress");
        assert_eq!(out.bytes_in, content.len() as u64);
        let compressed = fs::read(&dst).expect("read dst");
        assert_eq!(out.bytes_out, compressed.len() as u64);
        assert!(
            out.bytes_out < out.bytes_in,
            "repetitive input should shrink"
        );
        let back = zstd::decode_all(&compressed[..]).expect("decode");
        assert_eq!(back, content);
        assert_eq!(
            entries(dir.path()),
            ["in", "out.zst"],
            "temp file left behind"
        );
    }

    #[test]
    fn replaces_an_existing_destination() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("in");
        let dst = dir.path().join("out.zst");
        fs::write(&src, b"").expect("write");
        fs::write(&dst, b"old contents").expect("write");
        let out = compress(&src, &dst, 19).expect("compress");
        assert_eq!(out.bytes_in, 0);
        let back = zstd::decode_all(&fs::read(&dst).expect("read")[..]).expect("decode");
        assert!(back.is_empty());
    }

    #[test]
    fn invalid_level_is_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("in");
        fs::write(&src, b"abc").expect("write");
        for level in [-1, 23, i32::MAX] {
            let err = compress(&src, &dir.path().join("out"), level)
                .expect_err("level out of range must fail");
            assert!(format!("{err:?}").contains("BadInput"), "{err:?}");
            assert!(err.to_string().contains("level"), "{err}");
        }
        assert_eq!(entries(dir.path()), ["in"]);
    }

    #[test]
    fn missing_destination_directory_fails_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("in");
        fs::write(&src, b"abc").expect("write");
        let dst = dir.path().join("missing").join("out.zst");
        let err = compress(&src, &dst, 1).expect_err("missing directory must fail");
        assert!(!err.is_cancelled());
        assert_eq!(entries(dir.path()), ["in"]);
    }

    #[test]
    fn failed_rename_removes_the_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("in");
        fs::write(&src, b"abc").expect("write");
        // A non-empty directory as destination: the rename fails after the
        // temp file was fully written.
        let dst = dir.path().join("taken");
        fs::create_dir(&dst).expect("mkdir");
        fs::write(dst.join("x"), b"").expect("write");
        let err = compress(&src, &dst, 1).expect_err("renaming over a directory must fail");
        assert!(err.to_string().contains("rename"), "{err}");
        assert_eq!(entries(dir.path()), ["in", "taken"]);
    }

    #[test]
    fn cancellation_removes_the_temp_file_and_keeps_dst() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("in");
        let dst = dir.path().join("out.zst");
        fs::write(&src, vec![7u8; 300_000]).expect("write");
        fs::write(&dst, b"old").expect("write");
        let err = run_detached(
            &Compress,
            CompressInput {
                src: s(&src),
                dst: s(&dst),
                level: 1,
            },
            Some(Duration::ZERO),
        )
        .expect_err("must be cancelled");
        assert!(err.is_cancelled(), "{err:?}");
        assert_eq!(fs::read(&dst).expect("read"), b"old");
        assert_eq!(entries(dir.path()), ["in", "out.zst"]);
    }

    #[test]
    fn missing_source_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("nope");
        let err = compress(&src, &dir.path().join("out"), 0).expect_err("missing source must fail");
        let src = s(&src);
        assert!(err.to_string().contains(&src), "{err}");
        assert!(entries(dir.path()).is_empty());
    }
}
