// SPDX-License-Identifier: MPL-2.0
//! Streams rotated by wall-clock time: a stream id with strftime fields in UTC
//! (`air-%Y%m%d-%H` names one stream per hour), or a fixed period. Pure arithmetic on epoch
//! milliseconds, shared by the writer (where to cut) and the reader (which streams cover a range),
//! and [`RotatedRange`], which reads a wall-clock range across the rotated streams.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Timelike, Utc};

use super::frame::StreamFormat;
use super::pool::Pool;
use super::reader::{Bound, Piece, RangeReader, ReadError, ReaderConfig, ReaderStats};

/// The finest time field of a pattern: its streams start at each boundary of this unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Month,
    Year,
}

/// How streams are rotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// A stream id with strftime fields (UTC); a new stream starts whenever the name changes.
    Pattern { pattern: String, unit: Unit },
    /// A fixed period in ms, aligned on the epoch (3600000 starts streams on the hour); the
    /// name is the stream id, `-`, and the period's start as `YYYYMMDDTHHMMSSZ`.
    Every { stream_id: String, period_ms: i64 },
}

/// The strftime fields a pattern may use, with the unit each one changes at. Others are
/// refused: a name must follow from its period alone, the same for the writer and the reader.
const FIELDS: &[(char, Unit)] = &[
    ('Y', Unit::Year),
    ('y', Unit::Year),
    ('m', Unit::Month),
    ('d', Unit::Day),
    ('j', Unit::Day),
    ('H', Unit::Hour),
    ('M', Unit::Minute),
    ('S', Unit::Second),
];

impl Rotation {
    /// The rotation a stream id asks for: `None` when it holds no `%` field. Errors name the
    /// field that cannot be used.
    pub fn from_pattern(stream_id: &str) -> Result<Option<Rotation>, String> {
        let mut unit: Option<Unit> = None;
        let mut chars = stream_id.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                continue;
            }
            match chars.next() {
                Some('%') => {}
                Some(f) => {
                    let Some((_, u)) = FIELDS.iter().find(|(k, _)| *k == f) else {
                        return Err(format!(
                            "stream-id {stream_id:?} uses %{f}: rotated stream ids may use only \
                             %Y %y %m %d %j %H %M %S (UTC) and %%"
                        ));
                    };
                    unit = Some(unit.map_or(*u, |old| old.min(*u)));
                }
                None => {
                    return Err(format!(
                        "stream-id {stream_id:?} ends with a lone %: write %% for a percent sign"
                    ))
                }
            }
        }
        let Some(unit) = unit else {
            return Ok(None);
        };
        // Every coarser field too, so that no name comes back (`air-%H` would append to
        // yesterday's stream at the same hour).
        let has = |f: &str| stream_id.contains(f);
        let date = has("%j") || (has("%m") && has("%d"));
        let missing = [
            (Unit::Year, has("%Y") || has("%y"), "%Y"),
            (Unit::Month, has("%m") || has("%j"), "%m"),
            (Unit::Day, date, "%d (or %j)"),
            (Unit::Hour, has("%H"), "%H"),
            (Unit::Minute, has("%M"), "%M"),
        ]
        .into_iter()
        .filter(|(u, present, _)| *u > unit && !present)
        .map(|(_, _, f)| f)
        .collect::<Vec<_>>();
        if !missing.is_empty() {
            return Err(format!(
                "stream-id {stream_id:?} would reuse its names: a pattern that changes every {} \
                 also needs {} so that each stream name is used once",
                format!("{unit:?}").to_lowercase(),
                missing.join(" and ")
            ));
        }
        Ok(Some(Rotation::Pattern {
            pattern: stream_id.to_string(),
            unit,
        }))
    }

    /// A fixed period (at least one second).
    pub fn every(stream_id: &str, period_ms: i64) -> Result<Rotation, String> {
        if period_ms < 1000 {
            return Err(format!(
                "a rotation period of {period_ms} ms is too short: use at least 1000 ms"
            ));
        }
        Ok(Rotation::Every {
            stream_id: stream_id.to_string(),
            period_ms,
        })
    }

    /// The start of the period holding `t_ms` (epoch ms, UTC).
    pub fn period_start(&self, t_ms: i64) -> i64 {
        match self {
            Rotation::Every { period_ms, .. } => t_ms.div_euclid(*period_ms) * period_ms,
            Rotation::Pattern { unit, .. } => {
                let t = utc(t_ms);
                let start = match unit {
                    Unit::Second => t.with_nanosecond(0),
                    Unit::Minute => t.with_nanosecond(0).and_then(|t| t.with_second(0)),
                    Unit::Hour => t
                        .with_nanosecond(0)
                        .and_then(|t| t.with_second(0))
                        .and_then(|t| t.with_minute(0)),
                    Unit::Day => Some(midnight(t.year(), t.month(), t.day())),
                    Unit::Month => Some(midnight(t.year(), t.month(), 1)),
                    Unit::Year => Some(midnight(t.year(), 1, 1)),
                };
                start.map_or(t_ms, |s| s.timestamp_millis())
            }
        }
    }

    /// The first boundary after `t_ms`: where the next stream begins.
    pub fn next_boundary(&self, t_ms: i64) -> i64 {
        let start = self.period_start(t_ms);
        match self {
            Rotation::Every { period_ms, .. } => start + period_ms,
            Rotation::Pattern { unit, .. } => {
                let s = utc(start);
                match unit {
                    Unit::Second => start + 1000,
                    Unit::Minute => start + 60_000,
                    Unit::Hour => start + 3_600_000,
                    Unit::Day => start + 86_400_000,
                    Unit::Month => {
                        let (y, m) = if s.month() == 12 {
                            (s.year() + 1, 1)
                        } else {
                            (s.year(), s.month() + 1)
                        };
                        midnight(y, m, 1).timestamp_millis()
                    }
                    Unit::Year => midnight(s.year() + 1, 1, 1).timestamp_millis(),
                }
            }
        }
    }

    /// The stream id of the period holding `t_ms`.
    pub fn name_at(&self, t_ms: i64) -> String {
        match self {
            Rotation::Every { stream_id, .. } => {
                let s = utc(self.period_start(t_ms));
                format!("{stream_id}-{}", s.format("%Y%m%dT%H%M%SZ"))
            }
            Rotation::Pattern { pattern, .. } => {
                // Expanded by hand over the allowed fields, so nothing else can be interpreted.
                let t = utc(t_ms);
                let mut out = String::with_capacity(pattern.len() + 8);
                let mut chars = pattern.chars();
                while let Some(c) = chars.next() {
                    if c != '%' {
                        out.push(c);
                        continue;
                    }
                    match chars.next() {
                        Some('Y') => out.push_str(&format!("{:04}", t.year())),
                        Some('y') => out.push_str(&format!("{:02}", t.year().rem_euclid(100))),
                        Some('m') => out.push_str(&format!("{:02}", t.month())),
                        Some('d') => out.push_str(&format!("{:02}", t.day())),
                        Some('j') => out.push_str(&format!("{:03}", t.ordinal())),
                        Some('H') => out.push_str(&format!("{:02}", t.hour())),
                        Some('M') => out.push_str(&format!("{:02}", t.minute())),
                        Some('S') => out.push_str(&format!("{:02}", t.second())),
                        Some(other) => {
                            out.push('%');
                            if other != '%' {
                                out.push(other);
                            }
                        }
                        None => out.push('%'),
                    }
                }
                out
            }
        }
    }

    /// The streams that cover `[from_ms, to_ms)`, in time order: (name, period start, period
    /// end), the first and last cut to the range.
    pub fn covering(&self, from_ms: i64, to_ms: i64) -> Vec<(String, i64, i64)> {
        let mut out = Vec::new();
        let mut t = from_ms;
        while t < to_ms {
            let end = self.next_boundary(t).min(to_ms);
            out.push((self.name_at(t), t, end));
            t = end;
        }
        out
    }
}

/// A wall-clock range read across rotated streams: each period's stream in turn, joined
/// sample to sample at the boundaries (racssink starts each stream with the sample captured
/// at its boundary), with a missing stream, a late start or an early end handed out as a gap.
pub struct RotatedRange {
    pool: Arc<Pool>,
    base: ReaderConfig,
    /// (stream, from ns, to ns, from is a period boundary, to is a period boundary)
    parts: VecDeque<(String, i128, i128, bool, bool)>,
    format: StreamFormat,
    current: Option<(RangeReader, i128)>,
    pending: VecDeque<Piece>,
    ref_ms: i64,
    stats: ReaderStats,
    /// Stored time (ns) where the audio or gap handed out so far ends, once there is one.
    last_end: Option<i128>,
}

/// A stream starting or ending this close to its period's boundary is joined sample to
/// sample; farther away the difference is a gap. Above racssink's default max-drift (20 ms),
/// well under anything a listener would call a hole.
pub const SEAM_TOLERANCE_NS: i128 = 100_000_000;

/// The reader of one stream or of a range across rotated streams.
// One per element, moved once into its fetch task: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum AnyRange {
    One(RangeReader),
    Rotated(RotatedRange),
}

impl AnyRange {
    pub fn format(&self) -> StreamFormat {
        match self {
            AnyRange::One(r) => r.format(),
            AnyRange::Rotated(r) => r.format,
        }
    }

    /// The `ref` of the stream the last piece came from.
    pub fn ref_ms(&self) -> i64 {
        match self {
            AnyRange::One(r) => r.ref_ms(),
            AnyRange::Rotated(r) => r.ref_ms,
        }
    }

    pub fn stats(&self) -> ReaderStats {
        match self {
            AnyRange::One(r) => r.stats(),
            AnyRange::Rotated(r) => r.stats(),
        }
    }

    pub fn empty_reason(&self) -> Option<&str> {
        match self {
            AnyRange::One(r) => r.empty_reason(),
            AnyRange::Rotated(_) => None,
        }
    }

    pub async fn next_piece(&mut self) -> Result<Option<Piece>, ReadError> {
        match self {
            AnyRange::One(r) => r.next_piece().await,
            AnyRange::Rotated(r) => r.next_piece().await,
        }
    }
}

fn frames_in(ns: i128, rate: u32) -> u64 {
    ((ns.max(0) * i128::from(rate) + 500_000_000) / 1_000_000_000) as u64
}

impl RotatedRange {
    /// The streams of `rotation` covering `[from_ns, to_ns)`; the format comes from the first
    /// that exists (none existing is an error).
    pub async fn open(
        pool: Arc<Pool>,
        base: ReaderConfig,
        rotation: &Rotation,
        from_ns: i128,
        to_ns: i128,
    ) -> Result<Self, ReadError> {
        let from_ms = from_ns.div_euclid(1_000_000) as i64;
        let to_ms = (to_ns + 999_999).div_euclid(1_000_000) as i64;
        let covering = rotation.covering(from_ms, to_ms);
        let n = covering.len();
        let mut parts = VecDeque::new();
        for (i, (name, a, b)) in covering.into_iter().enumerate() {
            let a_ns = if i == 0 {
                from_ns
            } else {
                i128::from(a) * 1_000_000
            };
            let b_ns = if i + 1 == n {
                to_ns
            } else {
                i128::from(b) * 1_000_000
            };
            let a_edge = rotation.period_start(a) == a && a_ns == i128::from(a) * 1_000_000;
            let b_edge = i + 1 < n || rotation.period_start(b) == b && b_ns % 1_000_000 == 0;
            parts.push_back((name, a_ns, b_ns, a_edge, b_edge));
        }
        let mut stats = ReaderStats::default();
        let mut format = None;
        {
            let mut conn = pool.checkout(base.timeout).await?;
            for (name, ..) in &parts {
                stats.infos += 1;
                if let Some(info) = conn.stream_info(name).await? {
                    format = Some(info.format().map_err(|e| {
                        ReadError::Format(format!("stream '{name}' cannot be read: {e}"))
                    })?);
                    break;
                }
            }
        }
        let Some(format) = format else {
            let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
            return Err(ReadError::Missing(format!(
                "none of the {} rotated streams of '{}' from {} to {} exists on the RACS server \
                 at {} ({}{}): check stream-id, start, stop, host and port",
                names.len(),
                base.stream_id,
                crate::client::reader::format_unix_ns(from_ns),
                crate::client::reader::format_unix_ns(to_ns),
                pool.addr(),
                names.iter().take(3).copied().collect::<Vec<_>>().join(", "),
                if names.len() > 3 { ", ..." } else { "" }
            )));
        };
        Ok(RotatedRange {
            pool,
            base,
            parts,
            format,
            current: None,
            pending: VecDeque::new(),
            ref_ms: 0,
            stats,
            last_end: None,
        })
    }

    pub fn format(&self) -> StreamFormat {
        self.format
    }

    /// Sample frames of the whole range at the stream's rate.
    pub fn frames(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| frames_in(p.2 - p.1, self.format.sample_rate))
            .sum()
    }

    pub fn stats(&self) -> ReaderStats {
        let mut s = self.stats;
        if let Some((r, _)) = &self.current {
            let c = r.stats();
            s.queries += c.queries;
            s.infos += c.infos;
            s.fallbacks += c.fallbacks;
            s.retries += c.retries;
            s.waits += c.waits;
            s.bytes += c.bytes;
            s.holes += c.holes;
        }
        s
    }

    /// Queues a gap up to `to_ns`: from `from_ns`, or from where the audio before it ended
    /// when that is within the seam tolerance (so that a range keeps its length).
    fn gap(&mut self, from_ns: i128, to_ns: i128, reason: String) {
        let from_ns = self
            .last_end
            .filter(|e| (e - from_ns).abs() <= SEAM_TOLERANCE_NS)
            .unwrap_or(from_ns);
        self.last_end = Some(to_ns);
        let frames = frames_in(to_ns - from_ns, self.format.sample_rate);
        if frames > 0 {
            self.stats.holes += 1;
            self.pending.push_back(Piece::Gap {
                frame: 0,
                unix_ns: from_ns,
                frames,
                reason,
            });
        }
    }

    /// Opens the next period's stream, queueing a gap for what it lacks at its start.
    async fn next_part(&mut self) -> Result<bool, ReadError> {
        let Some((name, a, b, a_edge, b_edge)) = self.parts.pop_front() else {
            return Ok(false);
        };
        let info = {
            let mut conn = self.pool.checkout(self.base.timeout).await?;
            self.stats.infos += 1;
            conn.stream_info(&name).await?
        };
        let Some(info) = info else {
            self.gap(
                a,
                b,
                format!(
                    "rotated stream '{name}' does not exist on the RACS server at {}: nothing is \
                     stored from {} to {}",
                    self.pool.addr(),
                    crate::client::reader::format_unix_ns(a),
                    crate::client::reader::format_unix_ns(b)
                ),
            );
            return Ok(true);
        };
        let format = info
            .format()
            .map_err(|e| ReadError::Format(format!("stream '{name}' cannot be read: {e}")))?;
        if format != self.format {
            return Err(ReadError::Format(format!(
                "rotated stream '{name}' stores {format}, the streams before it {}: a range \
                 across rotated streams needs one format",
                self.format
            )));
        }
        let r = i128::from(info.ref_ms) * 1_000_000;
        let rate = self.format.sample_rate;
        let bpf = self.format.bytes_per_frame() as u64;
        let end = r + i128::from(info.size / bpf) * 1_000_000_000 / i128::from(rate);
        if info.size == 0 || info.ref_ms == 0 || end <= a || r >= b {
            self.gap(
                a,
                b,
                format!(
                    "rotated stream '{name}' holds no audio from {} to {}",
                    crate::client::reader::format_unix_ns(a),
                    crate::client::reader::format_unix_ns(b)
                ),
            );
            return Ok(true);
        }
        let mut cfg = self.base.clone();
        cfg.stream_id = name.clone();
        cfg.follow = false;
        cfg.start = if r > a + SEAM_TOLERANCE_NS {
            self.gap(
                a,
                r,
                format!(
                    "rotated stream '{name}' starts at {}, after its period began ({})",
                    crate::client::reader::format_unix_ns(r),
                    crate::client::reader::format_unix_ns(a)
                ),
            );
            Bound::Frame(0)
        } else if a_edge {
            // Its first sample is the one captured at the boundary.
            Bound::Frame(0)
        } else {
            Bound::UnixNs(a.max(r))
        };
        cfg.stop = if b_edge && end <= b + SEAM_TOLERANCE_NS {
            Bound::Open
        } else {
            Bound::UnixNs(b)
        };
        let open_end = cfg.stop == Bound::Open;
        let reader = RangeReader::open(self.pool.clone(), cfg).await?;
        self.ref_ms = info.ref_ms;
        self.last_end = Some(if open_end { end } else { b });
        let tail = if end < b - SEAM_TOLERANCE_NS { end } else { b };
        self.current = Some((reader, tail));
        // Where the stream ends early, the gap follows its audio.
        if tail < b {
            self.parts
                .push_front((format!("\0{name}"), tail, b, false, false));
        }
        Ok(true)
    }

    pub async fn next_piece(&mut self) -> Result<Option<Piece>, ReadError> {
        loop {
            if let Some(p) = self.pending.pop_front() {
                return Ok(Some(p));
            }
            if let Some((reader, _)) = self.current.as_mut() {
                match reader.next_piece().await? {
                    Some(p) => return Ok(Some(p)),
                    None => {
                        let (reader, _) = self.current.take().expect("checked");
                        let c = reader.stats();
                        self.stats.queries += c.queries;
                        self.stats.infos += c.infos;
                        self.stats.fallbacks += c.fallbacks;
                        self.stats.retries += c.retries;
                        self.stats.waits += c.waits;
                        self.stats.bytes += c.bytes;
                        self.stats.holes += c.holes;
                        continue;
                    }
                }
            }
            // A stream that ended early: the rest of its period is a gap.
            if let Some((name, a, b, ..)) = self.parts.front().cloned() {
                if let Some(name) = name.strip_prefix('\0') {
                    self.parts.pop_front();
                    self.gap(
                        a,
                        b,
                        format!(
                            "rotated stream '{name}' ends at {}, before its period ends ({})",
                            crate::client::reader::format_unix_ns(a),
                            crate::client::reader::format_unix_ns(b)
                        ),
                    );
                    continue;
                }
            }
            if !self.next_part().await? {
                return Ok(None);
            }
        }
    }
}

fn utc(t_ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t_ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn midnight(y: i32, m: u32, d: u32) -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(y, m, d)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|n| n.and_utc())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-01-31T23:59:59.500Z
    const T: i64 = 1_769_903_999_500;

    fn pattern(p: &str) -> Rotation {
        Rotation::from_pattern(p).unwrap().unwrap()
    }

    #[test]
    fn patterns_pick_their_finest_field() {
        assert_eq!(Rotation::from_pattern("air").unwrap(), None);
        assert_eq!(Rotation::from_pattern("100%% air").unwrap(), None);
        for (p, unit) in [
            ("air-%Y%m%d-%H", Unit::Hour),
            ("air-%Y", Unit::Year),
            ("%Y%j-%H:%M", Unit::Minute),
            ("a-%y%j", Unit::Day),
            ("a-%Y-%m", Unit::Month),
            ("a-%Y%m%d%H%M%S", Unit::Second),
        ] {
            assert_eq!(
                pattern(p),
                Rotation::Pattern {
                    pattern: p.into(),
                    unit
                }
            );
        }
        let e = Rotation::from_pattern("air-%A").unwrap_err();
        assert!(
            e.contains("uses %A") && e.contains("%Y %y %m %d %j %H %M %S"),
            "{e}"
        );
        let e = Rotation::from_pattern("air-%H").unwrap_err();
        assert!(
            e.contains("reuse its names") && e.contains("%Y and %m and %d (or %j)"),
            "{e}"
        );
        let e = Rotation::from_pattern("air-%Y%m%d%M").unwrap_err();
        assert!(e.contains("every minute also needs %H"), "{e}");
        let e = Rotation::from_pattern("air-%").unwrap_err();
        assert!(e.contains("lone %"), "{e}");
        assert!(Rotation::every("air", 999).is_err());
    }

    #[test]
    fn names_and_boundaries_across_month_and_year_ends() {
        let r = pattern("air-%Y%m%d-%H");
        assert_eq!(r.name_at(T), "air-20260131-23");
        assert_eq!(r.period_start(T), T - 3_599_500);
        assert_eq!(r.next_boundary(T), T + 500);
        assert_eq!(r.name_at(T + 500), "air-20260201-00");
        let m = pattern("m-%Y-%m");
        assert_eq!(
            utc(m.next_boundary(T)).to_rfc3339(),
            "2026-02-01T00:00:00+00:00"
        );
        let dec = Utc
            .with_ymd_and_hms(2025, 12, 15, 1, 2, 3)
            .unwrap()
            .timestamp_millis();
        assert_eq!(
            utc(m.next_boundary(dec)).to_rfc3339(),
            "2026-01-01T00:00:00+00:00"
        );
        let y = pattern("y-%y-%j");
        assert_eq!(y.name_at(dec), "y-25-349");
        assert_eq!(pattern("p%%-%Y%j%H").name_at(T), "p%-202603123");
        let every = Rotation::every("air", 3_600_000).unwrap();
        assert_eq!(every.name_at(T), "air-20260131T230000Z");
        assert_eq!(every.next_boundary(T), T + 500);
    }

    #[test]
    fn covering_joins_periods_without_gap_or_overlap() {
        let r = pattern("air-%Y%m%d-%H%M");
        let from = T - 150_000;
        let to = T + 90_000;
        let parts = r.covering(from, to);
        let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "air-20260131-2357",
                "air-20260131-2358",
                "air-20260131-2359",
                "air-20260201-0000",
                "air-20260201-0001"
            ]
        );
        assert_eq!(parts[0].1, from);
        assert_eq!(parts.last().unwrap().2, to);
        for w in parts.windows(2) {
            assert_eq!(w[0].2, w[1].1);
            assert_eq!(w[1].1 % 60_000, 0);
        }
        assert!(r.covering(to, from).is_empty());
    }

    #[test]
    fn every_instant_lies_in_exactly_its_period() {
        let rotations = [
            pattern("a-%Y%m%d%H%M%S"),
            pattern("a-%Y%j%H%M"),
            pattern("a-%Y%m%d"),
            pattern("a-%Y%m"),
            pattern("a-%Y"),
            Rotation::every("a", 7_000).unwrap(),
        ];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // 1970 .. 2100
            let t = (x % 4_102_444_800_000) as i64;
            for r in &rotations {
                let s = r.period_start(t);
                let e = r.next_boundary(t);
                assert!(s <= t && t < e, "{r:?} {t}: [{s}, {e})");
                assert_eq!(r.name_at(s), r.name_at(t));
                assert_eq!(r.name_at(e - 1), r.name_at(t));
                assert_ne!(r.name_at(e), r.name_at(t), "{r:?} {t}");
                assert_eq!(r.period_start(e), e);
            }
        }
    }
}
