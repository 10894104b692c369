//! Lowercase hexadecimal, the one spelling of bytes as text here: digests, serials,
//! fingerprints, tokens. `decode` accepts either case, `encode` writes lowercase.

/// Lowercase hex of `bytes` (`2 * len` digits).
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// The bytes of `text`, an even number of hex digits (either case); None for anything
/// else, an empty text giving no bytes.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Exactly `N` bytes as `2 * N` hex digits (a SHA-256 digest is `decode_array::<32>`).
pub fn decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    decode(text)?.try_into().ok()
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_is_lowercase_and_decode_inverts_it() {
        assert_eq!(encode(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(encode(&[]), "");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)), Some(all.clone()));
        assert_eq!(decode(&encode(&all).to_uppercase()), Some(all));
        assert_eq!(decode("DEADbeef"), Some(vec![0xde, 0xad, 0xbe, 0xef]));
    }

    #[test]
    fn decode_refuses_odd_lengths_and_non_digits() {
        for bad in ["a", "abc", "0g", "+1", " 01", "0x01", "é0"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        assert_eq!(decode(""), Some(Vec::new()));
        assert_eq!(decode_array::<2>("0102"), Some([1, 2]));
        assert_eq!(decode_array::<2>("010203"), None);
        assert_eq!(decode_array::<32>(&"ab".repeat(32)), Some([0xab; 32]));
    }
}
