// SPDX-License-Identifier: MPL-2.0
//! Streams rotated by wall-clock time: a stream id with strftime fields in UTC
//! (`air-%Y%m%d-%H` names one stream per hour), or a fixed period. Pure arithmetic on epoch
//! milliseconds, shared by the writer (where to cut) and the reader (which streams cover a range:
//! [`plan`], with the continuation streams a writer starts after a long pause and, for patterns
//! that change every second, the streams of any fixed period, both found by SEARCH), and
//! [`RotatedRange`], which reads a wall-clock range across the rotated streams.

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

    /// The finest field of a pattern; `None` for a fixed period.
    pub fn unit(&self) -> Option<Unit> {
        match self {
            Rotation::Pattern { unit, .. } => Some(*unit),
            Rotation::Every { .. } => None,
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

    /// The stream that continues the period stream `period_name` from `t_ms` on, when the
    /// writer could not append to it (a pause longer than max-fill inside the period):
    /// `period_name-YYYYMMDDTHHMMSS.mmmZ`, the time of its first sample. The reader finds it
    /// with SEARCH and joins it after the period stream.
    pub fn continuation_name(period_name: &str, t_ms: i64) -> String {
        format!("{period_name}-{}", utc(t_ms).format(CONTINUATION_TIME))
    }

    /// The period name and start (epoch ms) of a continuation stream name of this rotation.
    pub fn parse_continuation(&self, name: &str) -> Option<(String, i64)> {
        let cut = name.len().checked_sub(CONTINUATION_LEN)?;
        let (period, time) = (name.get(..cut)?, name.get(cut..)?);
        let time = time.strip_prefix('-')?;
        let t = chrono::NaiveDateTime::parse_from_str(time, CONTINUATION_TIME)
            .ok()?
            .and_utc()
            .timestamp_millis();
        // In its period; a pattern that changes every second names streams of any period
        // (`rotate`), so there it only has to start after the stream it continues.
        let in_period = match self.unit() {
            Some(Unit::Second) => self.parse_name(period).is_some_and(|p| p <= t),
            _ => self.name_at(t) == period,
        };
        (in_period && Self::continuation_name(period, t) == name).then(|| (period.to_string(), t))
    }

    /// The SEARCH pattern matching this rotation's period names (each field as `?`s of its
    /// width, glob characters of the literal text escaped); `None` for a fixed period.
    pub fn glob(&self) -> Option<String> {
        let Rotation::Pattern { pattern, .. } = self else {
            return None;
        };
        let mut out = String::with_capacity(pattern.len() + 8);
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let literal = if c == '%' {
                match chars.next() {
                    Some('%') | None => '%',
                    Some(f) => {
                        out.push_str(&"?".repeat(field_width(f)));
                        continue;
                    }
                }
            } else {
                c
            };
            match literal {
                '*' | '?' | '[' => {
                    out.push('[');
                    out.push(literal);
                    out.push(']');
                }
                c => out.push(c),
            }
        }
        Some(out)
    }

    /// The start (epoch ms) of the period a name of this pattern stands for; `None` when the
    /// name is not one this rotation gives a period.
    pub fn parse_name(&self, name: &str) -> Option<i64> {
        let Rotation::Pattern { pattern, .. } = self else {
            return None;
        };
        let (mut y, mut mo, mut d, mut j, mut h, mut mi, mut sec) =
            (None, 1u32, 1u32, None, 0u32, 0u32, 0u32);
        let mut rest = name;
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let field = if c == '%' {
                match chars.next() {
                    Some('%') | None => None,
                    Some(f) => Some(f),
                }
            } else {
                None
            };
            let Some(f) = field else {
                let lit = if c == '%' { '%' } else { c };
                rest = rest.strip_prefix(lit)?;
                continue;
            };
            let w = field_width(f);
            let digits = rest.get(..w)?;
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let v: u32 = digits.parse().ok()?;
            rest = &rest[w..];
            match f {
                'Y' => y = Some(v as i32),
                'y' => y = Some(2000 + v as i32),
                'm' => mo = v,
                'd' => d = v,
                'j' => j = Some(v),
                'H' => h = v,
                'M' => mi = v,
                'S' => sec = v,
                _ => return None,
            }
        }
        if !rest.is_empty() {
            return None;
        }
        let y = y?;
        let date = match j {
            Some(j) => NaiveDate::from_yo_opt(y, j)?,
            None => NaiveDate::from_ymd_opt(y, mo, d)?,
        };
        let t = date.and_hms_opt(h, mi, sec)?.and_utc().timestamp_millis();
        (self.name_at(t) == name).then(|| self.period_start(t))
    }
}

/// The time in a continuation stream's name, and that part's length with its `-`.
const CONTINUATION_TIME: &str = "%Y%m%dT%H%M%S%.3fZ";
const CONTINUATION_LEN: usize = 1 + 8 + 1 + 6 + 4 + 1;

/// Digits a pattern field is written with.
fn field_width(f: char) -> usize {
    match f {
        'Y' => 4,
        'j' => 3,
        _ => 2,
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
        let mut stats = ReaderStats::default();
        // The streams that exist besides the periods' own names: continuations (a writer that
        // could not append after a long pause), and for a pattern that changes every second,
        // all of them (streams of any fixed period are named that way).
        let mut existing = Vec::new();
        if let Some(glob) = rotation.glob() {
            let mut conn = pool.checkout(base.timeout).await?;
            stats.infos += 1;
            existing = conn.search(&format!("{glob}-????????T??????.???Z")).await?;
            if rotation.unit() == Some(Unit::Second) {
                stats.infos += 1;
                existing.extend(conn.search(&glob).await?);
            }
        }
        let planned = plan(rotation, from_ms, to_ms, &existing);
        let n = planned.len();
        let mut parts = VecDeque::new();
        for (i, (name, a, b, a_edge, b_edge)) in planned.into_iter().enumerate() {
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
            let a_edge = a_edge && a_ns == i128::from(a) * 1_000_000;
            let b_edge = b_edge && b_ns == i128::from(b) * 1_000_000;
            parts.push_back((name, a_ns, b_ns, a_edge, b_edge));
        }
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
                            "rotated stream '{name}' ends at {}, before the next stream or the end of \
                             its period ({})",
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

/// Which stream holds which part of `[from_ms, to_ms)`, in time order: (name, from, to, `from`
/// is where the stream starts, `to` is where the next stream starts). Each period's stream
/// holds its period up to the first continuation of it in `existing`, each continuation up to
/// the next one or the period's end. A pattern that changes every second says nothing of the
/// period length (a fixed `rotate` period is named that way), so there the streams in
/// `existing` decide: each holds from its start up to the next one's; before the first, the
/// part goes to the name of `from` (which does not exist: a gap).
pub fn plan(
    rotation: &Rotation,
    from_ms: i64,
    to_ms: i64,
    existing: &[String],
) -> Vec<(String, i64, i64, bool, bool)> {
    let continuations: Vec<(String, i64, String)> = existing
        .iter()
        .filter_map(|n| {
            rotation
                .parse_continuation(n)
                .map(|(period, t)| (period, t, n.clone()))
        })
        .collect();
    // Consecutive streams as (start, end, name), then cut to the range.
    let mut streams: Vec<(i64, i64, String)> = Vec::new();
    fn push_run(streams: &mut Vec<(i64, i64, String)>, run: &mut Vec<(i64, String)>, end: i64) {
        run.sort();
        run.dedup();
        for k in 0..run.len() {
            let next = run.get(k + 1).map_or(end, |r| r.0);
            streams.push((run[k].0, next, run[k].1.clone()));
        }
    }
    if rotation.unit() == Some(Unit::Second) {
        let mut run: Vec<(i64, String)> = existing
            .iter()
            .filter_map(|n| rotation.parse_name(n).map(|t| (t, n.clone())))
            .chain(continuations.iter().map(|(_, t, n)| (*t, n.clone())))
            .collect();
        run.sort();
        let first = run.iter().rposition(|r| r.0 <= from_ms);
        let missing_until = run.first().map_or(i64::MAX, |r| r.0);
        let mut run: Vec<(i64, String)> = match first {
            Some(k) => run.split_off(k),
            None => {
                streams.push((from_ms, missing_until, rotation.name_at(from_ms)));
                run
            }
        };
        push_run(&mut streams, &mut run, i64::MAX);
    } else {
        for (name, a, _) in rotation.covering(from_ms, to_ms) {
            let start = rotation.period_start(a);
            let mut run = vec![(start, name.clone())];
            run.extend(
                continuations
                    .iter()
                    .filter(|(p, t, _)| *p == name && *t > start)
                    .map(|(_, t, n)| (*t, n.clone())),
            );
            push_run(&mut streams, &mut run, rotation.next_boundary(a));
        }
    }
    streams
        .into_iter()
        .filter_map(|(s, e, name)| {
            let (a, b) = (s.max(from_ms), e.min(to_ms));
            // After the last stream there is no next one: it is read to its end (`to` may
            // lie beyond it; what it lacks is then a gap).
            (a < b).then_some((name, a, b, a == s, b == e || e == i64::MAX))
        })
        .collect()
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

    fn at(h: u32, m: u32, s: u32, ms: i64) -> i64 {
        Utc.with_ymd_and_hms(2026, 1, 9, h, m, s)
            .unwrap()
            .timestamp_millis()
            + ms
    }

    #[test]
    fn names_parse_back_and_globs_match_them() {
        let r = pattern("a*b-%Y%m%d-%H");
        assert_eq!(r.glob().unwrap(), "a[*]b-????????-??");
        assert_eq!(r.parse_name("a*b-20260109-10"), Some(at(10, 0, 0, 0)));
        for bad in [
            "a*b-20260109-1x",
            "a*b-20260109-24",
            "a*b-20260109-10x",
            "ab-20260109-10",
        ] {
            assert_eq!(r.parse_name(bad), None, "{bad}");
        }
        let y = pattern("y-%y-%j");
        assert_eq!(y.parse_name("y-26-009"), Some(at(0, 0, 0, 0)));
        assert_eq!(
            pattern("p%%-%Y%j%H").parse_name("p%-202600910"),
            Some(at(10, 0, 0, 0))
        );
        let c = Rotation::continuation_name("a*b-20260109-10", at(10, 30, 0, 250));
        assert_eq!(c, "a*b-20260109-10-20260109T103000.250Z");
        assert_eq!(
            r.parse_continuation(&c),
            Some(("a*b-20260109-10".to_string(), at(10, 30, 0, 250)))
        );
        // A continuation must lie in the period it continues.
        let wrong = Rotation::continuation_name("a*b-20260109-10", at(11, 0, 0, 0));
        assert_eq!(r.parse_continuation(&wrong), None);
        assert_eq!(Rotation::every("x", 3_600_000).unwrap().glob(), None);
    }

    #[test]
    fn a_continuation_takes_over_the_rest_of_its_period() {
        let r = pattern("a-%Y%m%d-%H");
        let c = Rotation::continuation_name("a-20260109-10", at(10, 30, 0, 250));
        let parts = plan(
            &r,
            at(10, 0, 0, 0),
            at(12, 0, 0, 0),
            &[c.clone(), "a-20260109-10".into(), "unrelated".into()],
        );
        assert_eq!(
            parts,
            [
                (
                    "a-20260109-10".to_string(),
                    at(10, 0, 0, 0),
                    at(10, 30, 0, 250),
                    true,
                    true
                ),
                (c.clone(), at(10, 30, 0, 250), at(11, 0, 0, 0), true, true),
                (
                    "a-20260109-11".to_string(),
                    at(11, 0, 0, 0),
                    at(12, 0, 0, 0),
                    true,
                    true
                ),
            ]
        );
        // From inside the continuation.
        let parts = plan(
            &r,
            at(10, 40, 0, 0),
            at(10, 50, 0, 0),
            std::slice::from_ref(&c),
        );
        assert_eq!(
            parts,
            [(c, at(10, 40, 0, 0), at(10, 50, 0, 0), false, false)]
        );
    }

    #[test]
    fn streams_of_a_fixed_period_are_planned_from_those_that_exist() {
        // rotate=3600 names its streams x-YYYYMMDDTHHMMSSZ: read as x-%Y%m%dT%H%M%SZ.
        let r = pattern("x-%Y%m%dT%H%M%SZ");
        let c = Rotation::continuation_name("x-20260109T100000Z", at(10, 15, 0, 0));
        let existing: Vec<String> = [
            "x-20260109T090000Z",
            "x-20260109T100000Z",
            "x-20260109T120000Z",
            &c,
            "x-20261399T000000Z",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let parts = plan(&r, at(9, 30, 0, 0), at(12, 30, 0, 0), &existing);
        assert_eq!(
            parts,
            [
                (
                    "x-20260109T090000Z".to_string(),
                    at(9, 30, 0, 0),
                    at(10, 0, 0, 0),
                    false,
                    true
                ),
                (
                    "x-20260109T100000Z".to_string(),
                    at(10, 0, 0, 0),
                    at(10, 15, 0, 0),
                    true,
                    true
                ),
                (c, at(10, 15, 0, 0), at(12, 0, 0, 0), true, true),
                (
                    "x-20260109T120000Z".to_string(),
                    at(12, 0, 0, 0),
                    at(12, 30, 0, 0),
                    true,
                    true
                ),
            ]
        );
        // Before the first stream: the name of the range's start, which does not exist (a gap
        // whatever its edges say).
        let parts = plan(&r, at(8, 0, 0, 0), at(9, 30, 0, 0), &existing);
        assert_eq!(
            parts,
            [
                (
                    "x-20260109T080000Z".to_string(),
                    at(8, 0, 0, 0),
                    at(9, 0, 0, 0),
                    true,
                    true
                ),
                (
                    "x-20260109T090000Z".to_string(),
                    at(9, 0, 0, 0),
                    at(9, 30, 0, 0),
                    true,
                    false
                ),
            ]
        );
        assert_eq!(
            plan(&r, at(8, 0, 0, 0), at(8, 1, 0, 0), &[]),
            [(
                "x-20260109T080000Z".to_string(),
                at(8, 0, 0, 0),
                at(8, 1, 0, 0),
                true,
                true
            )]
        );
    }
}

#[cfg(test)]
mod field_tests {
    use super::*;

    #[test]
    fn a_rotation_knows_its_finest_field() {
        let p = |s: &str| Rotation::from_pattern(s).unwrap().unwrap();
        assert_eq!(p("a-%Y%m%d-%H").unit(), Some(Unit::Hour));
        assert_eq!(p("a-%Y-%j").unit(), Some(Unit::Day));
        assert_eq!(p("a-%y%m").unit(), Some(Unit::Month));
        assert_eq!(p("a-%Y%m%d%H%M%S").unit(), Some(Unit::Second));
        assert_eq!(Rotation::every("a", 1000).unwrap().unit(), None);
        // %% is a percent sign, not a field.
        assert_eq!(Rotation::from_pattern("50%%").unwrap(), None);
        assert_eq!(p("50%%-%Y").name_at(0), "50%-1970");
        let e = Rotation::every("a", 999).unwrap_err();
        assert!(
            e.contains("999 ms is too short") && e.contains("1000 ms"),
            "{e}"
        );
    }

    #[test]
    fn fields_have_fixed_widths_and_globs_escape_literal_wildcards() {
        assert_eq!(field_width('Y'), 4);
        assert_eq!(field_width('j'), 3);
        for f in ['y', 'm', 'd', 'H', 'M', 'S'] {
            assert_eq!(field_width(f), 2, "%{f}");
        }
        let p = Rotation::from_pattern("a*b?[c]-%Y%j").unwrap().unwrap();
        assert_eq!(p.glob().unwrap(), "a[*]b[?][[]c]-???????");
        assert_eq!(Rotation::every("a", 1000).unwrap().glob(), None);
    }

    #[test]
    fn fixed_periods_are_named_after_their_start() {
        let r = Rotation::every("air", 3_600_000).unwrap();
        // 2026-01-09T10:30:00Z.
        let t = 1_767_954_600_000;
        assert_eq!(r.name_at(t), "air-20260109T100000Z");
        assert_eq!(r.period_start(t), 1_767_952_800_000);
        assert_eq!(r.next_boundary(t), 1_767_956_400_000);
        // Before the epoch too, aligned downwards.
        assert_eq!(r.period_start(-1), -3_600_000);
        assert_eq!(r.parse_name("air-20260109T100000Z"), None, "no pattern");
    }

    #[test]
    fn durations_become_whole_frames_never_negative() {
        assert_eq!(frames_in(1_000_000_000, 44_100), 44_100);
        // 11.3 us is 0.498 frames, 11.4 us 0.503.
        assert_eq!(frames_in(11_300, 44_100), 0);
        assert_eq!(frames_in(11_400, 44_100), 1);
        assert_eq!(frames_in(-5_000_000_000, 44_100), 0);
    }
}
