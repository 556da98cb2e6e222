use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written the way admins write them: `500ms`, `30s`, `10m`,
/// `2h`, `30d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let n: u64 = number.parse().map_err(|_| {
            format!("{s:?} is not a duration (write e.g. 500ms, 30s, 10m, 2h, 30d)")
        })?;
        let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs);
        let d = match unit.trim() {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" | "min" => secs(60),
            "h" => secs(3600),
            "d" => secs(86_400),
            _ => None,
        };
        d.map(HumanDuration)
            .ok_or_else(|| format!("{s:?} is not a duration (write e.g. 500ms, 30s, 10m, 2h, 30d)"))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_admin_units() {
        assert_eq!(
            "10m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(600)
        );
        assert_eq!(
            "2ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(2)
        );
        assert_eq!(
            "30d".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(2_592_000)
        );
        assert!("10".parse::<HumanDuration>().is_err());
        assert!("m".parse::<HumanDuration>().is_err());
        assert!("99999999999999999999d".parse::<HumanDuration>().is_err());
    }
}
