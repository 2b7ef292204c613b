//! Durations in config files: an integer and a unit, such as `250ms`, `10s`, `5m`, `1h`.

use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("\"{s}\" is not a duration; write e.g. \"250ms\", \"10s\", \"5m\""))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("\"{s}\" has no unit; write e.g. \"250ms\", \"10s\", \"5m\", \"1h\"")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn units() {
        assert_eq!(super::parse("250ms").unwrap().as_millis(), 250);
        assert_eq!(super::parse("2m").unwrap().as_secs(), 120);
        assert!(super::parse("10").is_err());
        assert!(super::parse("s").is_err());
        assert!(super::parse("1d").is_err());
    }
}
