//! Leases: which instance runs which poller. A lease is a row with an owner
//! and an expiry; the owner renews it well before it expires, and anyone may
//! take an expired one. One statement decides, so two instances racing for
//! the same lease cannot both win.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{Store, StoreError, on_pool};

impl Store {
    /// Take or renew `name` for `owner` until `now + ttl`. True when `owner`
    /// holds it afterwards.
    pub async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let expires =
            now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(30));
        let holder: Option<String> = on_pool!(self, pool => {
            sqlx::query_scalar(
                "INSERT INTO leases (name, owner, expires_at, acquired_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (name) DO UPDATE SET owner = $2, expires_at = $3, \
                 acquired_at = CASE WHEN leases.owner = $2 THEN leases.acquired_at ELSE $4 END \
                 WHERE leases.owner = $2 OR leases.expires_at < $4 \
                 RETURNING owner",
            )
            .bind(name)
            .bind(owner)
            .bind(expires)
            .bind(now)
            .fetch_optional(pool)
            .await?
        });
        Ok(holder.as_deref() == Some(owner))
    }

    /// Give the lease up at once (graceful stop), so another instance need
    /// not wait for it to expire.
    pub async fn release_lease(&self, name: &str, owner: &str) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM leases WHERE name = $1 AND owner = $2")
                .bind(name)
                .bind(owner)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn lease_holder(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT owner FROM leases WHERE name = $1 AND expires_at >= $2")
                .bind(name)
                .bind(now)
                .fetch_optional(pool)
                .await?
        }))
    }
}

/// Keeps one lease: waits until it can take it, then renews it every third
/// of its TTL. `held` is cancelled the moment the lease is lost or a renewal
/// cannot be confirmed, so the work it guards stops before another instance
/// can take over.
pub struct LeaseKeeper {
    pub store: Store,
    pub name: String,
    pub owner: String,
    pub ttl: Duration,
}

impl LeaseKeeper {
    /// Run until `shutdown`; calls `on_acquired` with a token that is
    /// cancelled when the lease is lost, each time the lease is won.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        mut on_acquired: impl FnMut(CancellationToken),
    ) {
        let beat = self.ttl / 3;
        let mut held: Option<CancellationToken> = None;
        loop {
            let mine = self
                .store
                .acquire_lease(&self.name, &self.owner, self.ttl, Utc::now())
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(lease = %self.name, error = %e, "lease renewal not confirmed");
                    false
                });
            match (&held, mine) {
                (None, true) => {
                    tracing::info!(lease = %self.name, owner = %self.owner, "lease acquired");
                    let token = shutdown.child_token();
                    on_acquired(token.clone());
                    held = Some(token);
                }
                (Some(token), false) => {
                    tracing::warn!(lease = %self.name, "lease lost; stopping its work");
                    token.cancel();
                    held = None;
                }
                _ => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(beat) => {}
            }
        }
        if let Some(token) = held {
            token.cancel();
            let _ = self.store.release_lease(&self.name, &self.owner).await;
        }
    }
}
