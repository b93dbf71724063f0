//! Checking a trail: every record in every segment, oldest first, against the chain.
//! Pure (bytes in, a verdict out), so it is fuzzed as it is.
//!
//! A trail is intact when every line is a complete JSON record, every segment begins
//! with its `segment` record, sequence numbers rise by one from record to record (across
//! segments too), and every record's `prev` is the SHA-256 of the line before it. The
//! first record of the oldest segment kept is the anchor: what came before it was
//! rotated away, and its `prev` is taken as given (the daemon's log has the head hash
//! of every rotation to compare it with).
//!
//! The first problem is reported, naming the record at fault: a record whose hash does
//! not match the `prev` of the next one was changed; a sequence number that skips or
//! goes back means records are missing or out of order; a line that does not parse is
//! broken where it is.

use serde::Deserialize;

use super::record::{Hash, hash, hex, parse_hash};

/// Checks the trail in `dir`, one segment at a time, oldest first.
pub fn verify_dir(dir: &std::path::Path, head: Option<&Hash>) -> Result<Summary, VerifyError> {
    let segments =
        super::files::list(dir).map_err(|e| VerifyError::Io(format!("{}: {e}", dir.display())))?;
    let mut v = Verifier::default();
    for (number, path) in segments {
        let bytes = std::fs::read(&path)
            .map_err(|e| VerifyError::Io(format!("{}: {e}", path.display())))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        v.segment(&Segment {
            name,
            number,
            bytes: &bytes,
        })?;
    }
    Ok(v.finish(head)?)
}

/// Why a trail could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Io(String),
    #[error("broken: {0}")]
    Broken(#[from] Broken),
}

/// One segment file: its name (for messages) and its bytes.
pub struct Segment<'a> {
    pub name: String,
    /// The segment's number, from its file name.
    pub number: u64,
    pub bytes: &'a [u8],
}

/// An intact trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub segments: usize,
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The `prev` of the first record: the hash the kept trail goes on from.
    pub anchor: Hash,
    /// The hash of the last record: the head.
    pub head: Hash,
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{segment}, line {line}: record {seq}: {reason}")]
pub struct Broken {
    pub segment: String,
    pub line: usize,
    /// The sequence number of the record at fault (the one expected there when it is
    /// missing).
    pub seq: u64,
    pub reason: String,
}

/// The fields of a line the chain needs.
#[derive(Deserialize)]
struct Head<'a> {
    seq: u64,
    #[serde(borrow)]
    prev: &'a str,
    #[serde(borrow)]
    time: &'a str,
    #[serde(borrow)]
    event: &'a str,
    segment: Option<u64>,
}

/// The last record seen: where it is, its number, its hash.
struct Last {
    segment: String,
    line: usize,
    seq: u64,
    hash: Hash,
}

/// Checks `segments` (oldest first) and, when given, that the last record's hash is
/// `head` (as the daemon logged it).
pub fn verify(segments: &[Segment<'_>], head: Option<&Hash>) -> Result<Summary, Broken> {
    let mut v = Verifier::default();
    for seg in segments {
        v.segment(seg)?;
    }
    v.finish(head)
}

/// A check that takes one segment at a time, oldest first, so that a trail is never in
/// memory whole.
#[derive(Default)]
pub struct Verifier {
    last: Option<Last>,
    segments: usize,
    records: u64,
    first_seq: u64,
    anchor: Hash,
}

impl Verifier {
    /// Checks the next segment against everything before it.
    pub fn segment(&mut self, seg: &Segment<'_>) -> Result<(), Broken> {
        self.segments += 1;
        let broken = |line: usize, seq: u64, reason: String| Broken {
            segment: seg.name.clone(),
            line,
            seq,
            reason,
        };
        let expected = self.last.as_ref().map_or(0, |l| l.seq.wrapping_add(1));
        if seg.bytes.is_empty() {
            return Err(broken(
                1,
                expected,
                "the segment is empty: its segment record is missing".into(),
            ));
        }
        let mut rest = seg.bytes;
        let mut line_no = 0;
        while !rest.is_empty() {
            line_no += 1;
            let expected = self.last.as_ref().map_or(0, |l| l.seq.wrapping_add(1));
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                return Err(broken(
                    line_no,
                    expected,
                    "the last line is incomplete (no newline): cut, or written partly".into(),
                ));
            };
            let line = &rest[..end];
            rest = &rest[end + 1..];
            let text = std::str::from_utf8(line).map_err(|_| {
                broken(
                    line_no,
                    expected,
                    "the line is not UTF-8: it was changed".into(),
                )
            })?;
            let rec: Head<'_> = serde_json::from_str(text).map_err(|e| {
                broken(
                    line_no,
                    expected,
                    format!("the line is not a record ({e}): it was changed"),
                )
            })?;
            if super::record::parse_rfc3339_ms(rec.time).is_none() {
                return Err(broken(
                    line_no,
                    rec.seq,
                    format!("its time {:?} is not a record time", rec.time),
                ));
            }
            let Some(prev) = parse_hash(rec.prev) else {
                return Err(broken(
                    line_no,
                    rec.seq,
                    "its prev is not a SHA-256 in hexadecimal".into(),
                ));
            };
            if line_no == 1 {
                if rec.event != "segment" {
                    return Err(broken(
                        line_no,
                        rec.seq,
                        format!(
                            "the segment begins with a {:?} record, not its segment record: its beginning was removed",
                            rec.event
                        ),
                    ));
                }
                if rec.segment != Some(seg.number) {
                    return Err(broken(
                        line_no,
                        rec.seq,
                        format!(
                            "its segment record names segment {:?}, the file is segment {}",
                            rec.segment, seg.number
                        ),
                    ));
                }
            } else if rec.event == "segment" {
                return Err(broken(
                    line_no,
                    rec.seq,
                    "a segment record in the middle of a segment".into(),
                ));
            }
            match &self.last {
                None => {
                    self.first_seq = rec.seq;
                    self.anchor = prev;
                }
                Some(l) => {
                    if rec.seq != l.seq.wrapping_add(1) {
                        let why = if rec.seq > l.seq {
                            format!(
                                "missing: record {} is followed by record {}",
                                l.seq, rec.seq
                            )
                        } else {
                            format!(
                                "out of order: record {} is followed by record {}",
                                l.seq, rec.seq
                            )
                        };
                        return Err(broken(line_no, l.seq.wrapping_add(1), why));
                    }
                    if prev != l.hash {
                        return Err(Broken {
                            segment: l.segment.clone(),
                            line: l.line,
                            seq: l.seq,
                            reason: format!(
                                "changed: its hash {} is not the prev {} that record {} holds",
                                hex(&l.hash),
                                hex(&prev),
                                rec.seq
                            ),
                        });
                    }
                }
            }
            self.records += 1;
            self.last = Some(Last {
                segment: seg.name.clone(),
                line: line_no,
                seq: rec.seq,
                hash: hash(line),
            });
        }
        Ok(())
    }

    /// The verdict once every segment was checked; with `head`, the last record's hash
    /// must be it.
    pub fn finish(self, head: Option<&Hash>) -> Result<Summary, Broken> {
        let Some(l) = self.last else {
            return Err(Broken {
                segment: "(none)".into(),
                line: 0,
                seq: 0,
                reason: "the trail has no segment".into(),
            });
        };
        if let Some(h) = head
            && *h != l.hash
        {
            return Err(Broken {
                segment: l.segment,
                line: l.line,
                seq: l.seq,
                reason: format!(
                    "the last record's hash {} is not the head {}: records after it were removed, or it was changed",
                    hex(&l.hash),
                    hex(h)
                ),
            });
        }
        Ok(Summary {
            segments: self.segments,
            records: self.records,
            first_seq: self.first_seq,
            last_seq: l.seq,
            anchor: self.anchor,
            head: l.hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{Body, ZERO_HASH, line};
    use super::*;

    /// A trail of `n` records in segments of `per` records, as the writer makes it.
    fn trail(n: u64, per: u64) -> Vec<Vec<u8>> {
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let mut prev = ZERO_HASH;
        let mut seq = 1;
        let mut number = 0;
        while seq <= n {
            number += 1;
            let mut seg = Vec::new();
            for i in 0..per {
                let body = if i == 0 {
                    Body::Segment { segment: number }
                } else {
                    Body::ExecutorStopping { running_jobs: seq }
                };
                let l = line(seq, 1000 * seq, &prev, &body);
                prev = hash(l.as_bytes());
                seg.extend_from_slice(l.as_bytes());
                seg.push(b'\n');
                seq += 1;
                if seq > n {
                    break;
                }
            }
            segs.push(seg);
        }
        segs
    }

    fn check(segs: &[Vec<u8>]) -> Result<Summary, Broken> {
        let s: Vec<Segment<'_>> = segs
            .iter()
            .enumerate()
            .map(|(i, b)| Segment {
                name: format!("s{}", i + 1),
                number: i as u64 + 1,
                bytes: b,
            })
            .collect();
        verify(&s, None)
    }

    fn lines(seg: &[u8]) -> Vec<Vec<u8>> {
        seg.split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    }

    #[test]
    fn an_intact_trail_verifies_across_segments() {
        let segs = trail(10, 4);
        let s = check(&segs).unwrap();
        assert_eq!(
            (s.segments, s.records, s.first_seq, s.last_seq),
            (3, 10, 1, 10)
        );
        // Without its oldest segment (rotated away), it still verifies from there.
        let kept: Vec<Segment<'_>> = (1..3)
            .map(|i| Segment {
                name: format!("s{}", i + 1),
                number: i as u64 + 1,
                bytes: &segs[i],
            })
            .collect();
        let s = verify(&kept, None).unwrap();
        assert_eq!((s.records, s.first_seq, s.last_seq), (6, 5, 10));
        // A segment under another number's name is not taken for it.
        assert!(check(&segs[1..]).is_err());
    }

    #[test]
    fn an_edited_byte_names_the_record() {
        let mut segs = trail(6, 10);
        let mut ls = lines(&segs[0]);
        let at = ls[2].len() - 3; // the running_jobs digit of record 3
        ls[2][at] = b'9';
        segs[0] = ls.concat();
        let e = check(&segs).unwrap_err();
        assert_eq!(e.seq, 3, "{e}");
        assert!(e.reason.starts_with("changed"), "{e}");
    }

    #[test]
    fn a_removed_record_names_the_missing_one() {
        let mut segs = trail(6, 10);
        let mut ls = lines(&segs[0]);
        ls.remove(3);
        segs[0] = ls.concat();
        let e = check(&segs).unwrap_err();
        assert_eq!(e.seq, 4, "{e}");
        assert!(e.reason.starts_with("missing"), "{e}");
    }

    #[test]
    fn swapped_records_are_out_of_order() {
        let mut segs = trail(6, 10);
        let mut ls = lines(&segs[0]);
        ls.swap(3, 4);
        segs[0] = ls.concat();
        let e = check(&segs).unwrap_err();
        assert_eq!(e.seq, 4, "{e}");
        assert!(e.reason.starts_with("missing"), "{e}");
    }

    #[test]
    fn a_cut_tail_shows_against_the_head() {
        let segs = trail(6, 10);
        let head = check(&segs).unwrap().head;
        let ls = lines(&segs[0]);
        let cut = ls[..5].concat();
        let s = [Segment {
            name: "s1".into(),
            number: 1,
            bytes: &cut,
        }];
        assert!(verify(&s, None).is_ok());
        let e = verify(&s, Some(&head)).unwrap_err();
        assert_eq!(e.seq, 5, "{e}");
        let half = &segs[0][..segs[0].len() - 3];
        let s = [Segment {
            name: "s1".into(),
            number: 1,
            bytes: half,
        }];
        assert!(verify(&s, None).unwrap_err().reason.contains("incomplete"));
    }
}
