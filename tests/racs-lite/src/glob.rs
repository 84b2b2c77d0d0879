// SPDX-License-Identifier: MPL-2.0
//! `fnmatch(pattern, name, FNM_PATHNAME)` on bytes, as the real server's SEARCH calls it (its
//! `FNM_IGNORECASE` is defined as 0x01, which is glibc's `FNM_PATHNAME`): `*`, `?`, bracket
//! expressions with `!`/`^` negation, ranges and `[:class:]`, and backslash escapes.
//! Case-sensitive; no wildcard or bracket matches `/` (only a literal `/` does); a leading `.`
//! is not special.

fn class_matches(name: &[u8], c: u8) -> Option<bool> {
    Some(match name {
        b"alpha" => c.is_ascii_alphabetic(),
        b"digit" => c.is_ascii_digit(),
        b"alnum" => c.is_ascii_alphanumeric(),
        b"upper" => c.is_ascii_uppercase(),
        b"lower" => c.is_ascii_lowercase(),
        b"space" => matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
        b"blank" => c == b' ' || c == b'\t',
        b"punct" => c.is_ascii_punctuation(),
        b"xdigit" => c.is_ascii_hexdigit(),
        b"cntrl" => c.is_ascii_control(),
        b"print" => (0x20..0x7f).contains(&c),
        b"graph" => c.is_ascii_graphic(),
        _ => return None,
    })
}

/// Try to match a bracket expression starting at `p[0] == b'['` against `c`.
/// Returns `Some((matched, pattern_len))`, or `None` when the bracket is not closed
/// (then `[` is an ordinary character).
fn bracket(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let ch = *p.get(i)?;
        if ch == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if ch == b'[' && p.get(i + 1) == Some(&b':') {
            if let Some(end) = p[i + 2..].windows(2).position(|w| w == b":]") {
                let name = &p[i + 2..i + 2 + end];
                if let Some(m) = class_matches(name, c) {
                    matched |= m;
                    i += 2 + end + 2;
                    continue;
                }
            }
        }
        let (lo, next) = if ch == b'\\' && i + 1 < p.len() {
            (p[i + 1], i + 2)
        } else {
            (ch, i + 1)
        };
        if p.get(next) == Some(&b'-') && p.get(next + 1).is_some_and(|&h| h != b']') {
            let (hi, after) = if p[next + 1] == b'\\' && next + 2 < p.len() {
                (p[next + 2], next + 3)
            } else {
                (p[next + 1], next + 2)
            };
            matched |= lo <= c && c <= hi;
            i = after;
        } else {
            matched |= c == lo;
            i = next;
        }
    }
}

/// Does `name` match the glob `pat` (with `FNM_PATHNAME`)?
pub fn fnmatch(pat: &[u8], name: &[u8]) -> bool {
    // Iterative matcher with single-star backtracking.
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    while p < pat.len() && pat[p] == b'*' {
                        p += 1;
                    }
                    star = Some((p, n));
                    continue;
                }
                b'?' if n < name.len() && name[n] != b'/' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                // glibc: under FNM_PATHNAME a `[` never matches `/`, even unterminated.
                b'[' if n < name.len() && name[n] == b'/' => {}
                b'[' if n < name.len() => match bracket(&pat[p..], name[n]) {
                    Some((true, len)) => {
                        p += len;
                        n += 1;
                        continue;
                    }
                    Some((false, _)) => {}
                    None => {
                        if name[n] == b'[' {
                            p += 1;
                            n += 1;
                            continue;
                        }
                    }
                },
                b'\\' if p + 1 < pat.len() && n < name.len() && pat[p + 1] == name[n] => {
                    p += 2;
                    n += 1;
                    continue;
                }
                b'\\' if p + 1 < pat.len() => {}
                c if n < name.len() && c == name[n] && c != b'?' && c != b'[' && c != b'\\' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'\\' if p + 1 == pat.len() && n < name.len() && name[n] == b'\\' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
        } else if n == name.len() {
            return true;
        }
        // Mismatch: backtrack to the last star, letting it eat one more byte.
        match star {
            // A star never eats a `/`.
            Some((sp, sn)) if sn < name.len() && name[sn] != b'/' => {
                star = Some((sp, sn + 1));
                p = sp;
                n = sn + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fnmatch;
    #[test]
    fn globs() {
        let m = |p: &str, n: &str| fnmatch(p.as_bytes(), n.as_bytes());
        assert!(m("*", ""));
        assert!(!m("*", "a/b"));
        assert!(m("*/*", "a/b"));
        assert!(m("a/*", "a/b"));
        assert!(!m("a?b", "a/b"));
        assert!(!m("a[/]b", "a/b"));
        assert!(!m("a[!x]b", "a/b"));
        assert!(m("a\\/b", "a/b"));
        assert!(m("studio/*", "studio/mic1"));
        assert!(!m("studio*", "studio/mic1"));
        assert!(m("*a/b*", "xa/by"));
        assert!(m("B*", "Bravo"));
        assert!(!m("B*", "bravo"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("[abc]x", "bx"));
        assert!(!m("[!b]x", "bx"));
        assert!(m("[!b]x", "ax"));
        assert!(m("[[]", "["));
        assert!(m("[*]", "*"));
        assert!(!m("[*]", "a"));
        assert!(m("[a-c]*", "charlie"));
        assert!(m("[]]", "]"));
        assert!(m("[", "["));
        assert!(m("*a*b*", "xxaxxbxx"));
        assert!(!m("*a*b", "xxaxxbxxc"));
        assert!(m("[[:digit:]]*", "1abc"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "a"));
    }
}
