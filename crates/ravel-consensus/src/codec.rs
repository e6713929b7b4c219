//! The binary encoding of everything openraft hands us to store or send: log
//! entries, votes, log ids, memberships, snapshot metadata and Raft RPCs.
//!
//! bincode is compact and fast; a leading version byte lets a future build
//! change the encoding and still recognise (or clearly refuse) old bytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version of the encoding below. Stored as the first byte of every value.
pub const CODEC_VERSION: u8 = 1;

/// Bytes that cannot be decoded: damaged, or written by an unknown version.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty value")]
    Empty,
    #[error("encoding version {0} is unknown to this build (it reads version {CODEC_VERSION})")]
    UnknownVersion(u8),
    #[error("malformed value: {0}")]
    Malformed(#[from] bincode::Error),
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.push(CODEC_VERSION);
    bincode::serialize_into(&mut out, value)?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&CODEC_VERSION, rest)) => Ok(bincode::deserialize(rest)?),
        Some((&v, _)) => Err(CodecError::UnknownVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_refusals() {
        let v: (u64, String) = (7, "x".into());
        let bytes = encode(&v).unwrap();
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap(), v);
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<u64>(&[9, 0]),
            Err(CodecError::UnknownVersion(9))
        ));
        assert!(matches!(
            decode::<(u64, String)>(&bytes[..3]),
            Err(CodecError::Malformed(_))
        ));
    }
}
