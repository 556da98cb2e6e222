//! The writer's side of assignment: resolves a [`Route`] to a person inside
//! the commit transaction, with the state that decision reads (round-robin
//! turns, open-lead counts) cached for the transaction: read once, kept in
//! memory as leads are assigned, turns written back before commit.

use std::collections::HashMap;

use super::tx::Tx;
use crate::pipeline::Route;
use crate::routing::Strategy;

type R<T> = sqlx::Result<T>;

/// Who a new lead goes to.
pub(super) struct Assignment {
    pub user: Option<String>,
    pub role: Option<String>,
    pub note: Option<String>,
}

/// Round-robin turns and open-lead counts for the transaction: read once,
/// kept in memory as leads are assigned, turns written back before commit.
#[derive(Default)]
pub(super) struct Assigner {
    /// pool → (counter, changed)
    turns: HashMap<String, (i64, bool)>,
    loads: HashMap<String, i64>,
    /// Leads assigned per user that are decided but not yet inserted, so
    /// a count read from the table meanwhile is completed.
    unflushed: HashMap<String, i64>,
}

impl Assigner {
    /// Resolve a route to a person; `deferred` when the lead is inserted
    /// later with the pending rows.
    pub(super) async fn assign<T: Tx>(
        &mut self,
        tx: &mut T,
        route: &Route,
        deferred: bool,
    ) -> R<Assignment> {
        let assignment = match route {
            Route::Nobody => Assignment {
                user: None,
                role: None,
                note: Some("no rule, channel responsible or default matched".into()),
            },
            Route::User(u) => Assignment {
                user: Some(u.clone()),
                role: None,
                note: None,
            },
            Route::Role { role, members, .. } if members.is_empty() => Assignment {
                user: None,
                role: Some(role.clone()),
                note: Some(format!(
                    "role {role} has no active members; assigned to the role"
                )),
            },
            Route::Role {
                role,
                members,
                strategy: Strategy::RoundRobin,
            } => {
                let pool = format!("role:{role}");
                let turn = match self.turns.get_mut(&pool) {
                    Some(t) => t,
                    None => {
                        let counter = tx.current_turn(&pool).await?;
                        self.turns.entry(pool).or_insert((counter, false))
                    }
                };
                turn.0 += 1;
                turn.1 = true;
                let turn = turn.0;
                let pick = &members[((turn - 1).rem_euclid(members.len() as i64)) as usize];
                Assignment {
                    user: Some(pick.clone()),
                    role: Some(role.clone()),
                    note: Some(format!(
                        "role {role}: round_robin turn {turn} of [{}]",
                        members.join(", ")
                    )),
                }
            }
            Route::Role {
                role,
                members,
                strategy: Strategy::LeastLoaded,
            } => {
                let mut best: Option<(&String, i64)> = None;
                let mut loads = Vec::with_capacity(members.len());
                for m in members {
                    let n = self.load(tx, m).await?;
                    loads.push(format!("{m}={n}"));
                    if best.is_none_or(|(_, b)| n < b) {
                        best = Some((m, n));
                    }
                }
                Assignment {
                    user: best.map(|(m, _)| m.clone()),
                    role: Some(role.clone()),
                    note: Some(format!(
                        "role {role}: least_loaded open leads {}",
                        loads.join(", ")
                    )),
                }
            }
        };
        if let Some(user) = &assignment.user {
            if let Some(n) = self.loads.get_mut(user) {
                *n += 1;
            }
            if deferred {
                *self.unflushed.entry(user.clone()).or_default() += 1;
            }
        }
        Ok(assignment)
    }

    async fn load<T: Tx>(&mut self, tx: &mut T, user: &str) -> R<i64> {
        if let Some(n) = self.loads.get(user) {
            return Ok(*n);
        }
        let n = tx.open_lead_count(user).await? + self.unflushed.get(user).copied().unwrap_or(0);
        self.loads.insert(user.to_owned(), n);
        Ok(n)
    }

    pub(super) fn flushed(&mut self) {
        self.unflushed.clear();
    }

    pub(super) async fn save<T: Tx>(&mut self, tx: &mut T) -> R<()> {
        for (pool, (counter, changed)) in &mut self.turns {
            if *changed {
                tx.save_turn(pool, *counter).await?;
                *changed = false;
            }
        }
        Ok(())
    }
}
