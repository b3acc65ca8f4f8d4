//! A cap on the bytes per second sent to hosts (`apply --max-upload-rate`): one limiter shared by
//! every host's input stream, so the cap holds for the operator's uplink as a whole however many
//! hosts receive at once.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// Bytes per second for all hosts together. Each chunk books the next free slot of a virtual
/// clock (it ends `len / rate` after the previous one) and waits for its start, so the average
/// never exceeds the rate and one waiting stream does not hold up the bookings of the others.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: u64,
    next_free: Mutex<Option<Instant>>,
}

impl RateLimit {
    /// # Panics
    /// When `bytes_per_sec` is 0 (a cap of nothing: the flag parser refuses it).
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        assert!(bytes_per_sec > 0, "a rate of 0 bytes per second");
        RateLimit {
            bytes_per_sec,
            next_free: Mutex::new(None),
        }
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Wait until `len` more bytes may be sent.
    pub async fn take(&self, len: usize) {
        let start = {
            let mut next = self.next_free.lock().await;
            let now = Instant::now();
            let start = next.map_or(now, |n| n.max(now));
            let busy = Duration::from_secs_f64(len as f64 / self.bytes_per_sec as f64);
            *next = Some(start + busy);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// Why a `--max-upload-rate` value is not a rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("{0:?} is not a rate: bytes per second, e.g. 500K, 10M, 1G")]
    NotARate(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
    #[error("{0:?}: the rate must be above 0")]
    Zero(String),
}

/// `10M`, `512K`, `1G`, `2000000` (bytes per second; K, M, G are powers of 1024, an optional
/// `B`, `/s` or `iB` after them is accepted). For clap's `value_parser`.
pub fn parse_rate(text: &str) -> Result<u64, RateError> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let shift = match unit {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        _ => {
            return Err(RateError::NotARate(text.into()));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| RateError::NotARate(text.into()))?;
    let rate = n
        .checked_shl(shift)
        .filter(|r| r >> shift == n)
        .ok_or_else(|| RateError::TooLarge(text.into()))?;
    if rate == 0 {
        return Err(RateError::Zero(text.into()));
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_binary_units() {
        assert_eq!(parse_rate("2000000"), Ok(2_000_000));
        assert_eq!(parse_rate("512K"), Ok(512 << 10));
        assert_eq!(parse_rate("10M"), Ok(10 << 20));
        assert_eq!(parse_rate("10MiB"), Ok(10 << 20));
        assert_eq!(parse_rate("10MB/s"), Ok(10 << 20));
        assert_eq!(parse_rate("1g"), Ok(1 << 30));
        for bad in [
            "",
            "M",
            "10X",
            "-1M",
            "0",
            "0K",
            "1.5M",
            "99999999999999999999G",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }

    /// On tokio's paused clock (virtual time, nothing timed for real): 4 MiB in 256 KiB chunks
    /// at 1 MiB/s, from two streams at once, take 4 s of virtual time between them, and not
    /// before the last chunk's slot.
    #[tokio::test(start_paused = true)]
    async fn two_streams_share_the_rate() {
        let limit = std::sync::Arc::new(RateLimit::new(1 << 20));
        let t0 = Instant::now();
        let stream = |l: std::sync::Arc<RateLimit>| async move {
            for _ in 0..8 {
                l.take(256 << 10).await;
            }
        };
        tokio::join!(stream(limit.clone()), stream(limit.clone()));
        let took = t0.elapsed();
        // 16 chunks: the last one starts after the first 15 (3.75 s of the rate).
        assert!(took >= Duration::from_millis(3750), "{took:?}");
        assert!(took < Duration::from_millis(4000), "{took:?}");
    }
}
