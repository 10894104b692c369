//! The replication transfer frames (`wire::transfer`), as a peer could send them. Any
//! bytes, decoded frame after frame: never a panic; `Ok(None)` only when the buffer is
//! shorter than the frame its header announces; a frame uses exactly its header plus its
//! announced payload, within the kind's cap (so a reader never buffers more than one
//! frame's cap); the decoder is strict, so encoding a decoded frame gives back its very
//! bytes; and every shorter prefix of a frame asks for more bytes instead of failing.

use replgate::wire::transfer::{decode, encode, payload_limit, HEADER_LEN};

/// One input: panics when a property fails.
pub fn run(input: &[u8]) {
    let mut at = 0;
    while at < input.len() {
        let buf = &input[at..];
        match decode(buf) {
            Ok(None) => {
                if buf.len() >= HEADER_LEN {
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    assert!(
                        buf.len() < HEADER_LEN + len,
                        "asked for more with a whole frame"
                    );
                }
                break;
            }
            Ok(Some((frame, used))) => {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                assert_eq!(used, HEADER_LEN + len);
                assert!(len <= payload_limit(buf[0]).expect("a known kind"));
                let mut again = Vec::new();
                encode(&frame, &mut again);
                assert_eq!(again, &buf[..used], "{frame:?} re-encodes differently");
                for cut in [0, 1, HEADER_LEN - 1, HEADER_LEN, used - 1] {
                    if cut < used {
                        assert_eq!(decode(&buf[..cut]), Ok(None), "prefix of {cut} bytes");
                    }
                }
                at += used;
            }
            Err(_) => break,
        }
    }
}
