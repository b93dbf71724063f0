//! The output index: in which order the job's streams wrote, as one fixed-size entry per
//! run of bytes from one stream.
//!
//! A job's output directory holds one file per stream (`stdout`, `stderr`), each exactly
//! the bytes the job wrote to it, and `index`, a sequence of [`ENTRY_LEN`]-byte records:
//! the combined end offset (`u64`, little endian: how many output bytes, of both streams,
//! come up to the end of this run) and the stream's own end offset (`u64`, little endian,
//! its top byte the stream: 0 stdout, 1 stderr). A run's start is the previous record's
//! end (0 for the first); its bytes are those of its stream's file that end at its stream
//! end. Records are only ever appended; the last one, still growing while the job runs,
//! lives in memory until another stream writes or the output ends.

use jobworker_protocol::Stream;

/// Bytes of one record.
pub const ENTRY_LEN: u64 = 16;
/// Largest offset a record holds: the top byte of the stream end is the stream.
const MAX_OFFSET: u64 = (1 << 56) - 1;

/// One run of bytes from one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub stream: Stream,
    /// Combined output bytes up to the end of this run.
    pub end: u64,
    /// The stream's own bytes up to the end of this run.
    pub stream_end: u64,
}

impl Record {
    pub fn encode(&self) -> [u8; ENTRY_LEN as usize] {
        let mut b = [0u8; ENTRY_LEN as usize];
        b[..8].copy_from_slice(&self.end.to_le_bytes());
        let tagged = (self.stream_end & MAX_OFFSET) | ((self.stream.index() as u64) << 56);
        b[8..].copy_from_slice(&tagged.to_le_bytes());
        b
    }

    /// `None` for bytes that are no record (an unknown stream, a stream end past the
    /// combined end).
    pub fn decode(b: &[u8; ENTRY_LEN as usize]) -> Option<Record> {
        let end = u64::from_le_bytes(b[..8].try_into().ok()?);
        let tagged = u64::from_le_bytes(b[8..].try_into().ok()?);
        let stream = Stream::from_index((tagged >> 56) as u8)?;
        let stream_end = tagged & MAX_OFFSET;
        (stream_end <= end).then_some(Record {
            stream,
            end,
            stream_end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        for r in [
            Record {
                stream: Stream::Stdout,
                end: 0,
                stream_end: 0,
            },
            Record {
                stream: Stream::Stderr,
                end: 1 << 40,
                stream_end: (1 << 40) - 7,
            },
        ] {
            assert_eq!(Record::decode(&r.encode()), Some(r));
        }
    }

    #[test]
    fn garbage_is_no_record() {
        let mut b = Record {
            stream: Stream::Stderr,
            end: 10,
            stream_end: 4,
        }
        .encode();
        b[15] = 2;
        assert_eq!(Record::decode(&b), None, "an unknown stream");
        let past = Record {
            stream: Stream::Stdout,
            end: 3,
            stream_end: 4,
        };
        assert_eq!(
            Record::decode(&past.encode()),
            None,
            "a stream past the whole"
        );
    }
}
