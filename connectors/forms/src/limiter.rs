//! The per-address rate limit of a form channel.
//!
//! governor's keyed limiter keeps a state per address it has seen and
//! never forgets one by itself: a flood from ever new addresses (an IPv6
//! attacker has billions) would grow it without end. Addresses whose
//! state has run out are dropped now and then, so the limiter holds about
//! the addresses of the last minute.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// How often the limiter drops the addresses it no longer needs. Dropping
/// walks every remembered address, so not on every request.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

pub struct PerAddressLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    last_pruned: Mutex<Instant>,
}

impl PerAddressLimiter {
    /// `per_minute` requests a minute per address, with a burst of a fifth
    /// of it (at least 3): a person may retry a couple of times without a
    /// 429.
    pub fn per_minute(per_minute: NonZeroU32) -> PerAddressLimiter {
        let burst = NonZeroU32::new((per_minute.get() / 5).max(3)).unwrap_or(per_minute);
        PerAddressLimiter {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            last_pruned: Mutex::new(Instant::now()),
        }
    }

    /// Whether a request from `address` may go on now (and count it).
    pub fn allows(&self, address: IpAddr) -> bool {
        self.prune_if_due();
        self.limiter.check_key(&address).is_ok()
    }

    fn prune_if_due(&self) {
        // One request prunes; the others do not wait for it.
        let Ok(mut last) = self.last_pruned.try_lock() else {
            return;
        };
        if last.elapsed() < PRUNE_EVERY {
            return;
        }
        *last = Instant::now();
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_past_its_burst_is_refused() {
        let limiter = PerAddressLimiter::per_minute(NonZeroU32::new(10).unwrap());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let allowed = (0..10).filter(|_| limiter.allows(a)).count();
        assert_eq!(allowed, 3);
        assert!(limiter.allows("192.0.2.2".parse().unwrap()));
    }

    #[test]
    fn addresses_seen_once_are_forgotten_after_their_time() {
        // 600 a minute: one request's state runs out after 0.1 s.
        let limiter = PerAddressLimiter::per_minute(NonZeroU32::new(600).unwrap());
        for i in 0..10_000u32 {
            let address = std::net::Ipv6Addr::from((0x2001_0db8_u128 << 96) | u128::from(i));
            assert!(limiter.allows(address.into()));
        }
        assert_eq!(limiter.remembered(), 10_000);
        std::thread::sleep(Duration::from_millis(300));
        *limiter.last_pruned.lock().unwrap() -= PRUNE_EVERY;
        assert!(limiter.allows("192.0.2.9".parse().unwrap()));
        assert_eq!(limiter.remembered(), 1);
    }
}
