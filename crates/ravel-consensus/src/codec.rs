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

/// `#[serde(with = "crate::codec::bytes")]` for a `Vec<u8>` field: the
/// same bincode encoding as serde's default for `Vec<u8>` (a u64 length,
/// then the bytes) but written and read in one copy, not byte by byte
/// through a sequence (which cost ~9% of the CPU of a relocation: every
/// value is encoded and decoded several times on its way through the log,
/// the network and the state machine).
pub mod bytes {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        /// Formats without a bytes type (JSON) write a sequence.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// [`bytes`] for an `Option<Vec<u8>>` field.
pub mod option_bytes {
    use serde::de::{Deserializer, Visitor};
    use serde::{Serialize, Serializer};

    struct Bytes<'a>(&'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(b) => s.serialize_some(&Bytes(b)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        d.deserialize_option(OptionVisitor)
    }

    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<Vec<u8>>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("optional bytes")
        }

        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            super::bytes::deserialize(d).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-copy encoding of bytes is the default one, byte for byte:
    /// logs and snapshots written before it read the same.
    #[test]
    fn bytes_fields_encode_as_the_default_vec_encoding() {
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Plain {
            a: Vec<u8>,
            b: Option<Vec<u8>>,
            c: Option<Vec<u8>>,
        }
        #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
        struct Fast {
            #[serde(with = "bytes")]
            a: Vec<u8>,
            #[serde(with = "option_bytes")]
            b: Option<Vec<u8>>,
            #[serde(with = "option_bytes")]
            c: Option<Vec<u8>>,
        }
        let (a, b) = ((0..=255u8).collect::<Vec<u8>>(), Some(b"xyz".to_vec()));
        let plain = encode(&Plain {
            a: a.clone(),
            b: b.clone(),
            c: None,
        })
        .unwrap();
        let fast = Fast { a, b, c: None };
        assert_eq!(encode(&fast).unwrap(), plain);
        assert_eq!(decode::<Fast>(&plain).unwrap(), fast);
        // And through a format without bytes (JSON: a sequence).
        let json = serde_json::to_string(&fast).unwrap();
        assert_eq!(serde_json::from_str::<Fast>(&json).unwrap(), fast);
    }

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
