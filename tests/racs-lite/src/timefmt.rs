// SPDX-License-Identifier: MPL-2.0
//! Calendar helpers: `timegm`-style conversion with field normalisation, and the reverse
//! conversion used to name table files `seg/YYYY/MM/DD/hh/mm/ss/mmm`.

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d` (m in 1..=12).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Inverse of [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Like C `timegm` on a `struct tm` built from the given fields (month 1-based); out-of-range
/// fields are normalised (month 13 rolls into the next year, second 60 into the next minute...).
pub fn timegm(year: i64, mon: i64, day: i64, hour: i64, min: i64, sec: i64) -> i64 {
    let m0 = mon - 1;
    let y = year + m0.div_euclid(12);
    let m = m0.rem_euclid(12) + 1;
    let days = days_from_civil(y, m, 1) + (day - 1);
    days * 86400 + hour * 3600 + min * 60 + sec
}

/// Split epoch milliseconds into (year, month, day, hour, minute, second, millisecond).
pub fn split_ms(ms: i64) -> (i64, i64, i64, i64, i64, i64, i64) {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60, milli)
}

/// Current wall-clock time in ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn roundtrip() {
        assert_eq!(timegm(1970, 1, 1, 0, 0, 0), 0);
        assert_eq!(timegm(2025, 11, 5, 12, 14, 14), 1762344854);
        assert_eq!(timegm(2024, 13, 1, 0, 0, 0), timegm(2025, 1, 1, 0, 0, 0));
        assert_eq!(timegm(1969, 12, 31, 23, 59, 59), -1);
        for ms in [0i64, 1762344854608, 951782400000, -1] {
            let (y, m, d, h, mi, s, milli) = split_ms(ms);
            assert_eq!(timegm(y, m, d, h, mi, s) * 1000 + milli, ms);
        }
    }
}
