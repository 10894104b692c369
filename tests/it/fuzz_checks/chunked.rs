//! The chunked transfer coding (`wire::chunked`), both ways. Any bytes through
//! `ChunkedReader`: never a panic, never more bytes out than came in, and after the last
//! chunk nothing more. And a round trip: the input's content written through
//! `ChunkedWriter` in pieces the input chooses, then read back through `ChunkedReader`
//! in reads of sizes it chooses, is the same content, ending exactly at the last chunk.

use std::io::{Read, Write};

use replgate::wire::chunked::{ChunkedReader, ChunkedWriter};

/// One input: panics when a property fails.
pub fn run(input: &[u8]) {
    // Decoding arbitrary bytes.
    let mut reader = ChunkedReader::new(input);
    let mut out = Vec::new();
    let mut buf = [0u8; 97];
    let mut total = 0usize;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                assert!(total <= input.len(), "more out than in");
                out.extend_from_slice(&buf[..n]);
            }
            Err(_) => break,
        }
    }
    if reader.is_done() {
        assert_eq!(
            reader.read(&mut buf).unwrap_or(0),
            0,
            "nothing after the last chunk"
        );
    }

    // The round trip.
    let Some((&step, content)) = input.split_first() else {
        return;
    };
    let piece = usize::from(step % 64) + 1;
    let mut writer = ChunkedWriter::new(Vec::new());
    for part in content.chunks(piece) {
        writer.write_all(part).unwrap();
        if step & 0x80 != 0 {
            writer.flush().unwrap();
        }
    }
    let encoded = writer.finish().unwrap();
    let mut trailing = encoded.clone();
    trailing.extend_from_slice(b"NEXT REQUEST");
    let mut reader = ChunkedReader::new(&trailing[..]);
    let mut decoded = Vec::new();
    let mut small = vec![0u8; usize::from(step % 13) + 1];
    loop {
        let n = reader.read(&mut small).expect("our own encoding decodes");
        if n == 0 {
            break;
        }
        decoded.extend_from_slice(&small[..n]);
    }
    assert_eq!(decoded, content);
    assert!(reader.is_done());
    // The reader stops at the last chunk: what follows is the next request's.
    let mut rest = Vec::new();
    reader.get_mut().read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"NEXT REQUEST");
}
