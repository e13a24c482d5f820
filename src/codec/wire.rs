//! The Confluent wire format's framing: magic byte 0, a 4-byte big-endian
//! schema id, and for Protobuf the message-index list (zig-zag varints: a
//! count, then that many indexes; the single byte 0 stands for `[0]`).

/// A framed record: its schema id, message indexes (Protobuf) and payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Framed<'a> {
    pub schema_id: u32,
    pub indexes: Vec<i64>,
    pub payload: &'a [u8],
}

/// Splits a Confluent-framed record into its schema id and the rest;
/// `None` when `bytes` do not start with the magic byte 0 and 4 bytes.
pub fn frame(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [0, a, b, c, d, rest @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => None,
    }
}

/// Appends the frame of schema `id` (magic byte 0, the id big-endian).
pub fn put_frame(out: &mut Vec<u8>, id: u32) {
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Splits a Confluent-framed Protobuf record; `None` when `bytes` do not
/// start with the magic byte or the frame is cut short.
pub fn protobuf_frame(bytes: &[u8]) -> Option<Framed<'_>> {
    let (&magic, rest) = bytes.split_first()?;
    if magic != 0 || rest.len() < 4 {
        return None;
    }
    let schema_id = u32::from_be_bytes(rest[..4].try_into().ok()?);
    let mut rest = &rest[4..];
    let count = zigzag(&mut rest)?;
    let indexes = match count {
        0 => vec![0],
        n if !(0..=64).contains(&n) => return None,
        n => (0..n)
            .map(|_| zigzag(&mut rest))
            .collect::<Option<Vec<_>>>()?,
    };
    Some(Framed {
        schema_id,
        indexes,
        payload: rest,
    })
}

/// One zig-zag varint off the front of `b`.
fn zigzag(b: &mut &[u8]) -> Option<i64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(((v >> 1) as i64) ^ -((v & 1) as i64));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_into_id_indexes_and_payload() {
        let f = protobuf_frame(&[0, 0, 0, 1, 2, 0, 8, 1]).unwrap();
        assert_eq!(
            (f.schema_id, f.indexes, f.payload),
            (258, vec![0], &[8u8, 1][..])
        );
        // Two indexes [1, 0]: count 2 (zig-zag 4), 1 (2), 0 (0).
        let f = protobuf_frame(&[0, 0, 0, 0, 7, 4, 2, 0, 0x0a]).unwrap();
        assert_eq!(
            (f.schema_id, f.indexes, f.payload),
            (7, vec![1, 0], &[0x0a][..])
        );
    }

    #[test]
    fn what_is_no_frame_is_none() {
        for b in [
            &[][..],
            &[8, 1],
            &[0, 0, 0],
            &[0, 0, 0, 0, 1, 0x80],
            &[0, 0, 0, 0, 1, 3],
        ] {
            assert_eq!(protobuf_frame(b), None, "{b:?}");
        }
    }
}

#[cfg(test)]
mod hostile {
    use super::*;

    #[test]
    fn any_bytes_give_a_frame_or_none_never_a_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let len = rng.usize(0..24);
            let mut b: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if rng.bool() && !b.is_empty() {
                b[0] = 0;
            }
            if let Some(f) = protobuf_frame(&b) {
                assert!(f.payload.len() <= b.len().saturating_sub(6));
                assert!(!f.indexes.is_empty() && f.indexes.len() <= 64);
            }
        }
    }
}
