// SPDX-License-Identifier: MPL-2.0
//! Taking answers apart by their lengths. Pure functions over EXTRACT answers (int32 samples).
//!
//! An answer `Q(a, c)` holds every visible block of the stream whose key and whose table's name
//! both lie in `[a, c]` (the in-memory table has no name and always counts), in the order of the
//! tables' names, then the in-memory table; inside a table, in arrival order. With
//! `lo = min(key, name)` and `hi = max(key, name)`, a block is in `Q(a, c)` iff `a <= lo` and
//! `hi <= c`. Two answers that differ in one bound therefore differ by the blocks whose `lo`
//! (or `hi`) is exactly that bound, and where those blocks sit follows from the order rule:
//!
//! - `head`: the blocks of `Q(x, Y)` with `lo = x` that sit in the table named `x` come first
//!   (no other table in the answer has a smaller name), so they are the first
//!   `|Q(x, Y)| - |Q(x + 1, Y)|` bytes whenever no other block has `lo = x` (the caller proves
//!   that).
//! - `insertion`: `Q(k, N)` is `Q(k, N - 1)` with the blocks whose `hi = N` put in at one place
//!   (the table named `N` is the last table in the answer, before the in-memory blocks). The
//!   place is not known; every place that agrees with both answers is tried, and the inserted
//!   piece is accepted only when all of them give the same bytes. Content thus rules hypotheses
//!   out; it never picks one.

/// The first `|a| - b_len` bytes of `a`, when that is a whole number of frames of `w` bytes.
pub fn head(a: &[u8], b_len: usize, w: usize) -> Option<&[u8]> {
    let n = a.len().checked_sub(b_len)?;
    (n.is_multiple_of(w) && b_len.is_multiple_of(w)).then(|| &a[..n])
}

/// What `insertion` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Insertion {
    /// The answers are equal: nothing was inserted.
    Nothing,
    /// Every place the piece can have been inserted at gives these bytes; `at` is the range of
    /// those places (byte offsets in the longer answer).
    Unique { piece: Vec<u8>, at: (usize, usize) },
    /// Several places fit and give different bytes: the answers cannot decide.
    Ambiguous { places: usize },
    /// No place fits: `long` is not `short` with one piece inserted (the server's state changed
    /// between the two answers, or the caller's premise is wrong).
    Inconsistent,
}

/// The places (byte offsets in `long`, multiples of `w`, as an inclusive range) at which one
/// piece inserted into `short` gives `long`: `long[..j] == short[..j]` and
/// `long[j + d..] == short[j..]`. `None` when no place fits.
pub fn places(long: &[u8], short: &[u8], w: usize) -> Option<(usize, usize)> {
    if long.len() < short.len() || !long.len().is_multiple_of(w) || !short.len().is_multiple_of(w) {
        return None;
    }
    let prefix = long.iter().zip(short).take_while(|(a, b)| a == b).count();
    let suffix = long
        .iter()
        .rev()
        .zip(short.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let hi = prefix.min(short.len()) / w * w;
    let lo = short.len().saturating_sub(suffix).div_ceil(w) * w;
    (lo <= hi).then_some((lo, hi))
}

/// `long` should be `short` with one piece of whole `w`-byte frames inserted somewhere.
pub fn insertion(long: &[u8], short: &[u8], w: usize) -> Insertion {
    if long.len() == short.len() {
        return if long == short {
            Insertion::Nothing
        } else {
            Insertion::Inconsistent
        };
    }
    match places(long, short, w) {
        Some(at) => piece(long, long.len() - short.len(), at, w),
        None => Insertion::Inconsistent,
    }
}

/// The `d`-byte piece of `long` at any of the places `lo..=hi`, when they all give the same
/// bytes.
pub fn piece(long: &[u8], d: usize, (lo, hi): (usize, usize), w: usize) -> Insertion {
    if lo > hi || hi + d > long.len() {
        return Insertion::Inconsistent;
    }
    // All places give the same piece iff long[lo..hi + d] repeats with period w.
    let span = &long[lo..hi + d];
    let same = lo == hi || span[w..].iter().zip(span).all(|(a, b)| a == b);
    if same {
        Insertion::Unique {
            piece: long[lo..lo + d].to_vec(),
            at: (lo, hi),
        }
    } else {
        Insertion::Ambiguous {
            places: (hi - lo) / w + 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w32(v: &[i32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn head_is_the_difference_in_whole_frames() {
        let a = w32(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(head(&a, 8, 8), Some(&a[..16]));
        assert_eq!(head(&a, 24, 8), Some(&a[..0]));
        assert_eq!(head(&a, 4, 8), None);
        assert_eq!(head(&a, 28, 4), None);
    }

    #[test]
    fn an_insertion_into_distinct_samples_is_found_where_it_is() {
        let short = w32(&[1, 2, 3, 4, 5]);
        let long = w32(&[1, 2, 9, 9, 9, 3, 4, 5]);
        assert_eq!(
            insertion(&long, &short, 4),
            Insertion::Unique {
                piece: w32(&[9, 9, 9]),
                at: (8, 8)
            }
        );
        // At the ends too.
        assert_eq!(
            insertion(&w32(&[7, 1, 2]), &w32(&[1, 2]), 4),
            Insertion::Unique {
                piece: w32(&[7]),
                at: (0, 0)
            }
        );
        assert_eq!(
            insertion(&w32(&[1, 2, 7]), &w32(&[1, 2]), 4),
            Insertion::Unique {
                piece: w32(&[7]),
                at: (8, 8)
            }
        );
    }

    #[test]
    fn silence_fits_everywhere_and_still_decides_because_every_place_agrees() {
        let short = vec![0u8; 40];
        let long = vec![0u8; 56];
        assert_eq!(
            insertion(&long, &short, 8),
            Insertion::Unique {
                piece: vec![0; 16],
                at: (0, 40)
            }
        );
    }

    #[test]
    fn periodic_content_that_fits_in_several_places_is_ambiguous() {
        // short = A B, long = A B A B: "A B" at the start or the end, or "B A" in the middle.
        let short = w32(&[1, 2]);
        let long = w32(&[1, 2, 1, 2]);
        assert_eq!(
            insertion(&long, &short, 4),
            Insertion::Ambiguous { places: 3 }
        );
        // A B A is A B with A appended: only the end fits.
        assert_eq!(
            insertion(&w32(&[1, 2, 1]), &short, 4),
            Insertion::Unique {
                piece: w32(&[1]),
                at: (8, 8)
            }
        );
        // The example of the issue: X = "aba" after S = "ab" or before it.
        let short = w32(&[1, 2]);
        let long = w32(&[1, 2, 1, 1, 2]);
        assert!(matches!(
            insertion(&long, &short, 4),
            Insertion::Ambiguous { .. }
        ));
    }

    #[test]
    fn answers_that_are_not_one_insertion_apart_are_inconsistent() {
        assert_eq!(
            insertion(&w32(&[1, 9, 2, 9, 3]), &w32(&[1, 2, 3]), 4),
            Insertion::Inconsistent
        );
        assert_eq!(
            insertion(&w32(&[1, 2]), &w32(&[1, 2, 3]), 4),
            Insertion::Inconsistent
        );
        assert_eq!(
            insertion(&w32(&[1]), &w32(&[2]), 4),
            Insertion::Inconsistent
        );
        assert_eq!(insertion(&w32(&[1]), &w32(&[1]), 4), Insertion::Nothing);
        // Whole frames only: a 2-channel frame is 8 bytes.
        assert_eq!(
            insertion(&w32(&[1, 2, 3]), &w32(&[1, 2]), 8),
            Insertion::Inconsistent
        );
    }
}
