//! What the fuzz targets share: the codec round-trip check and the cutter
//! that splits an input stream into chunks. Included by each target with
//! `#[path]` (every file in `fuzz_targets/` named in `Cargo.toml` is a target).

use std::fmt::Debug;

use jobvisor_proto::codec;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `data` as a `T`; a value that decodes must encode again, no
/// longer than the accepted bytes (canonical), decode back to an equal
/// value, and be a fixed point of encode ∘ decode.
pub fn round_trip<T>(data: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let value = codec::decode::<T>(data).ok()?;
    let bytes = codec::encode(&value).expect("a decoded value must encode");
    assert!(
        bytes.len() <= data.len(),
        "re-encoding grew from {} to {} bytes: {value:?}",
        data.len(),
        bytes.len()
    );
    let back: T = codec::decode(&bytes).expect("a re-encoded value must decode");
    assert_eq!(back, value);
    assert_eq!(
        codec::encode(&back).unwrap(),
        bytes,
        "encoding is not canonical"
    );
    Some(value)
}

/// Chunk lengths: fixed for a selector below 0x80, else from a small LCG.
pub struct Cutter {
    fixed: Option<usize>,
    state: u32,
}

impl Cutter {
    pub fn new(selector: u8) -> Self {
        if selector < 0x80 {
            Self {
                fixed: Some(usize::from(selector) + 1),
                state: 0,
            }
        } else {
            Self {
                fixed: None,
                state: u32::from(selector),
            }
        }
    }

    pub fn next_len(&mut self) -> usize {
        if let Some(n) = self.fixed {
            return n;
        }
        self.state = self
            .state
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        // Mostly short cuts (header splits), sometimes long ones.
        let r = (self.state >> 16) as usize;
        if r.is_multiple_of(4) {
            1 + r % 600
        } else {
            1 + r % 7
        }
    }
}
