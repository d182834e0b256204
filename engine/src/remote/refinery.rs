//! [`RefineryLease`]: one refinery per repository across machines, held by a lease (kind
//! `"refinery"`, key = the repository key) in the PostgreSQL backend's `wiggum_leases`. The
//! holder renews it in the background; when the holder dies, the lease expires and another
//! machine takes it (the attempt counts up) and carries on from the remote's state: landing
//! what the dead holder already pushed is a no-op, what it had not pushed is landed again.
//!
//! The lease is what keeps refineries from working twice; the compare-and-swap push is what
//! keeps untested code out even when a paused holder wakes after its lease was taken over.

use std::time::Duration;

use super::land::{land_subtask, LandRequest, Landing};
use super::{Remote, RemoteError};
use crate::pg::lease::{keep, Keeper, Lease, Leases};

/// The lease kind of a repository's refinery.
pub const REFINERY_KIND: &str = "refinery";

/// The refinery of one repository, held.
pub struct RefineryLease {
    leases: Leases,
    lease: Lease,
    keeper: Keeper,
}

impl RefineryLease {
    /// Takes the refinery of repository `repo` (its repository key) for `holder` (this
    /// machine and process) for `ttl`, renewed every third of it; `None` while another holder's
    /// lease is live.
    pub async fn acquire(
        leases: &Leases,
        repo: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<RefineryLease>, RemoteError> {
        let Some(lease) = leases
            .acquire(repo, REFINERY_KIND, repo, holder, ttl)
            .await?
        else {
            return Ok(None);
        };
        let keeper = keep(leases.clone(), lease.clone(), ttl, ttl / 3);
        Ok(Some(RefineryLease {
            leases: leases.clone(),
            lease,
            keeper,
        }))
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// 1 for the repository's first refinery; one more for each takeover of an expired lease.
    pub fn attempt(&self) -> i32 {
        self.lease.attempt
    }

    /// Why the lease is lost, once it is.
    pub fn lost(&self) -> Option<String> {
        self.keeper.is_lost().then(|| {
            format!(
                "the refinery lease of {} (token {}) was taken over or could not be renewed",
                self.lease.repo, self.lease.token
            )
        })
    }

    /// Lands a subtask ([`land_subtask`]) while the lease holds: a lost lease stops the
    /// landing before its push.
    pub async fn land(
        &self,
        remote: &Remote,
        req: &LandRequest<'_>,
    ) -> Result<Landing, RemoteError> {
        if !self.leases.is_held(&self.lease).await? {
            return Err(RemoteError::LeaseLost {
                repo: self.lease.repo.clone(),
                branch: req.step_branch.to_string(),
                why: "another holder has the refinery lease".into(),
            });
        }
        land_subtask(remote, req, &|| self.lost()).await
    }

    /// Gives the refinery up (another machine may take it at once).
    pub async fn release(self) -> Result<bool, RemoteError> {
        Ok(self.leases.release(&self.lease).await?)
    }
}
