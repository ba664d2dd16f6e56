//! Which table holds the leases, and under which column names.

use crate::{Error, Result};

/// What [`RowLeases::complete`](crate::RowLeases::complete) does with a finished row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Completion {
    /// Delete the row (queues, outboxes that do not keep history). The default.
    #[default]
    Delete,
    /// Keep the row, clear its expiry and set its next attempt to `NULL` so it is never due again.
    /// The owner and token stay, as a record of who finished it.
    Keep,
}

/// A table that carries lease columns, with validated names.
///
/// The table needs these columns (names configurable, defaults shown):
///
/// | column            | type          | meaning                                                 |
/// |-------------------|---------------|---------------------------------------------------------|
/// | `id`              | any key type  | the row's primary key (bound as a Rust value `I`)       |
/// | `lease_owner`     | `text NULL`   | who holds (or last held) the lease                      |
/// | `lease_token`     | `bigint NOT NULL DEFAULT 0` | the fencing token, +1 on every claim      |
/// | `lease_expires_at`| `timestamptz NULL` | when the lease runs out; `NULL` when not leased    |
/// | `attempts`        | `int NOT NULL DEFAULT 0` | how many times the row was claimed           |
/// | `next_attempt_at` | `timestamptz NULL DEFAULT now()` | when the row is due; `NULL`: never    |
///
/// To add them to an existing table:
///
/// ```sql
/// ALTER TABLE jobs
///     ADD COLUMN lease_owner      text,
///     ADD COLUMN lease_token      bigint NOT NULL DEFAULT 0,
///     ADD COLUMN lease_expires_at timestamptz,
///     ADD COLUMN attempts         int NOT NULL DEFAULT 0,
///     ADD COLUMN next_attempt_at  timestamptz DEFAULT now();
/// -- the claim scans due rows in (next_attempt_at, id) order:
/// CREATE INDEX jobs_due ON jobs (next_attempt_at, id) WHERE next_attempt_at IS NOT NULL;
/// ```
///
/// Names must be plain identifiers (`[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes; the table may be
/// `schema.table`); they are also double-quoted in every statement, so no name can inject SQL.
///
/// ```
/// use leases::TableSpec;
///
/// let spec = TableSpec::builder("jobs").id_column("job_id").build()?;
/// assert_eq!(spec.table(), "\"jobs\"");
/// assert!(TableSpec::builder("jobs; DROP TABLE jobs").build().is_err());
/// # Ok::<(), leases::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub(crate) table: String,
    pub(crate) id: String,
    pub(crate) owner: String,
    pub(crate) token: String,
    pub(crate) expires_at: String,
    pub(crate) attempts: String,
    pub(crate) next_attempt_at: String,
    pub(crate) completion: Completion,
    pub(crate) completed_at: Option<String>,
    pub(crate) claim_filter: Option<&'static str>,
    /// Quoted; empty when rows are not grouped.
    pub(crate) group: Vec<String>,
    pub(crate) scheduled: bool,
}

impl TableSpec {
    /// Starts a spec for `table` with the default column names.
    pub fn builder(table: &str) -> TableSpecBuilder {
        TableSpecBuilder {
            table: table.to_owned(),
            id: "id".into(),
            owner: "lease_owner".into(),
            token: "lease_token".into(),
            expires_at: "lease_expires_at".into(),
            attempts: "attempts".into(),
            next_attempt_at: "next_attempt_at".into(),
            completion: Completion::default(),
            completed_at: None,
            claim_filter: None,
            group: Vec::new(),
            scheduled: true,
        }
    }

    /// The quoted table name, as it appears in statements.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// SQL that is true for a row whose lease is held at `now`: its expiry is after `now`. For
    /// statements that read leased rows without taking a lease (a status count), which must not
    /// write their own "still leased" rule. (A held lease may still be lost to its owner: only
    /// [`RowLeases`](crate::RowLeases)' fenced statements tell.)
    ///
    /// `now` is SQL written by the crate's user, never input: `"now()"`, or
    /// `"coalesce($1::timestamptz, statement_timestamp())"` with a [`Clock`](crate::Clock)'s time
    /// bound as `$1`.
    ///
    /// ```
    /// let spec = leases::TableSpec::builder("jobs").build()?;
    /// assert_eq!(spec.leased_at("now()"), "\"lease_expires_at\" > now()");
    /// let in_flight = format!("SELECT count(*) FROM jobs WHERE {}", spec.leased_at("now()"));
    /// # let _ = in_flight;
    /// # Ok::<(), leases::Error>(())
    /// ```
    pub fn leased_at(&self, now: &'static str) -> String {
        format!("{} > {now}", self.expires_at)
    }

    /// SQL that is true for a row whose lease is free at `now`: never held, released, finished or
    /// expired; the negation of [`leased_at`](Self::leased_at). For statements that must leave
    /// rows in flight alone without taking their lease (a retention purge). `now` as in
    /// [`leased_at`](Self::leased_at).
    ///
    /// ```
    /// let spec = leases::TableSpec::builder("jobs").build()?;
    /// assert_eq!(
    ///     spec.free_at("now()"),
    ///     "(\"lease_expires_at\" IS NULL OR \"lease_expires_at\" <= now())"
    /// );
    /// # Ok::<(), leases::Error>(())
    /// ```
    pub fn free_at(&self, now: &'static str) -> String {
        let expires_at = &self.expires_at;
        format!("({expires_at} IS NULL OR {expires_at} <= {now})")
    }

    /// The SQL assignments that finish a row the way [`Completion::Keep`] does: its expiry
    /// cleared, never due again (in a scheduled table), its completed-at column (if any) set to
    /// `now`. For statements that finish rows under another kind of lock than a row lease (a
    /// named lease held over a shard of the table). `now` as in [`leased_at`](Self::leased_at).
    ///
    /// ```
    /// let spec = leases::TableSpec::builder("jobs")
    ///     .completion(leases::Completion::Keep)
    ///     .completed_at_column("done_at")
    ///     .build()?;
    /// assert_eq!(
    ///     spec.finished("now()"),
    ///     "\"lease_expires_at\" = NULL, \"next_attempt_at\" = NULL, \"done_at\" = now()"
    /// );
    /// # Ok::<(), leases::Error>(())
    /// ```
    pub fn finished(&self, now: &str) -> String {
        let mut sets = vec![format!("{} = NULL", self.expires_at)];
        if self.scheduled {
            sets.push(format!("{} = NULL", self.next_attempt_at));
        }
        if let Some(column) = &self.completed_at {
            sets.push(format!("{column} = {now}"));
        }
        sets.join(", ")
    }
}

/// Builds a [`TableSpec`]; every name is checked by [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct TableSpecBuilder {
    table: String,
    id: String,
    owner: String,
    token: String,
    expires_at: String,
    attempts: String,
    next_attempt_at: String,
    completion: Completion,
    completed_at: Option<String>,
    claim_filter: Option<&'static str>,
    group: Vec<String>,
    scheduled: bool,
}

impl TableSpecBuilder {
    /// The primary key column. Default: `id`.
    pub fn id_column(mut self, name: &str) -> Self {
        name.clone_into(&mut self.id);
        self
    }

    /// The owner column. Default: `lease_owner`.
    pub fn owner_column(mut self, name: &str) -> Self {
        name.clone_into(&mut self.owner);
        self
    }

    /// The fencing token column. Default: `lease_token`.
    pub fn token_column(mut self, name: &str) -> Self {
        name.clone_into(&mut self.token);
        self
    }

    /// The expiry column. Default: `lease_expires_at`.
    pub fn expires_at_column(mut self, name: &str) -> Self {
        name.clone_into(&mut self.expires_at);
        self
    }

    /// The attempts counter column. Default: `attempts`.
    pub fn attempts_column(mut self, name: &str) -> Self {
        name.clone_into(&mut self.attempts);
        self
    }

    /// The due-time column. Default: `next_attempt_at`.
    pub fn next_attempt_at_column(mut self, name: &str) -> Self {
        name.clone_into(&mut self.next_attempt_at);
        self
    }

    /// What completing a lease does to its row. Default: [`Completion::Delete`].
    pub fn completion(mut self, completion: Completion) -> Self {
        self.completion = completion;
        self
    }

    /// With [`Completion::Keep`], a `timestamptz` column set to the clock's now when a lease is
    /// completed (for example `published_at`). Default: none.
    pub fn completed_at_column(mut self, name: &str) -> Self {
        self.completed_at = Some(name.to_owned());
        self
    }

    /// An extra SQL predicate a row must satisfy to be claimed. It refers to the candidate row by
    /// the table's own name, and to any other row of the table under an alias of its own (for
    /// example `"NOT EXISTS (SELECT 1 FROM jobs o WHERE o.group_id = jobs.group_id AND o.id < jobs.id)"`).
    /// It is a `&'static str` on purpose: it is code written by the crate's user, never input.
    /// Default: none.
    pub fn claim_filter(mut self, predicate: &'static str) -> Self {
        self.claim_filter = Some(predicate);
        self
    }

    /// Groups rows by these columns and claims each group in id order, in runs:
    ///
    /// - a row is a group's *head* when no row of its group with a smaller id is unfinished
    ///   (`next_attempt_at` not `NULL`: due, leased, or waiting for a retry); only heads start a
    ///   claim, so while a group's head is leased or waiting for a retry, no later row of the
    ///   group is claimed, by this owner or any other;
    /// - a claim takes each head with the rows that follow it in its group, in id order, up to the
    ///   first one that is not due or still leased: a run of consecutive rows, so a group with a
    ///   backlog is not claimed one row per claim. The claim's limit counts every row; when it cuts
    ///   a run, the run keeps its first rows;
    /// - only the head is written: the run's other rows (its *members*) hold the head's lease
    ///   ([`Lease::holder`](crate::Lease::holder) names the head) and are fenced through it. A
    ///   member's lease ends with its head's, so finish or release members before their head, or
    ///   in the same statement ([`complete_many`](crate::RowLeases::complete_many)). A member's
    ///   claim does not write its attempt: releasing the member counts it. Releasing a member
    ///   leaves it held until its head's lease ends.
    ///
    /// The [`claim_filter`](Self::claim_filter) applies to heads. The claim needs an index on the
    /// group columns and the id (`CREATE INDEX ... ON jobs (group_id, id) WHERE next_attempt_at IS
    /// NOT NULL`). Default: no groups (every due row is claimed on its own).
    ///
    /// ```
    /// let spec = leases::TableSpec::builder("jobs").group_columns(&["tenant", "group_id"]).build()?;
    /// # Ok::<(), leases::Error>(())
    /// ```
    pub fn group_columns(mut self, columns: &[&str]) -> Self {
        self.group = columns.iter().map(|&c| c.to_owned()).collect();
        self
    }

    /// A table whose rows are claimed only one at a time by key
    /// ([`RowLeases::claim_key_query`](crate::RowLeases::claim_key_query)), never in due order: it
    /// has no `attempts` and no `next_attempt_at` column. [`claim`](crate::RowLeases::claim) refuses
    /// such a table, a released row is free again at once, and [`Lease::attempts`](crate::Lease)
    /// reports the token, which counts claims all the same. Default: scheduled.
    pub fn without_schedule(mut self) -> Self {
        self.scheduled = false;
        self
    }

    /// Validates every name and returns the spec.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidIdentifier`] naming the first identifier that is not a plain SQL identifier.
    pub fn build(self) -> Result<TableSpec> {
        Ok(TableSpec {
            table: quote_table(&self.table)?,
            id: quote("id column", &self.id)?,
            owner: quote("owner column", &self.owner)?,
            token: quote("token column", &self.token)?,
            expires_at: quote("expires_at column", &self.expires_at)?,
            attempts: quote("attempts column", &self.attempts)?,
            next_attempt_at: quote("next_attempt_at column", &self.next_attempt_at)?,
            completion: self.completion,
            completed_at: self
                .completed_at
                .as_deref()
                .map(|name| quote("completed_at column", name))
                .transpose()?,
            claim_filter: self.claim_filter,
            group: self
                .group
                .iter()
                .map(|name| quote("group column", name))
                .collect::<Result<_>>()?,
            scheduled: self.scheduled,
        })
    }
}

fn quote_table(name: &str) -> Result<String> {
    let invalid = || Error::InvalidIdentifier {
        what: "table",
        value: name.to_owned(),
    };
    match name.split_once('.') {
        Some((schema, table)) => Ok(format!(
            "{}.{}",
            quote("table", schema).map_err(|_| invalid())?,
            quote("table", table).map_err(|_| invalid())?
        )),
        None => quote("table", name),
    }
}

/// Checks that `name` is a plain identifier and returns it double-quoted.
fn quote(what: &'static str, name: &str) -> Result<String> {
    let mut chars = name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let valid_rest = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid_start && valid_rest && name.len() <= 63 {
        Ok(format!("\"{name}\""))
    } else {
        Err(Error::InvalidIdentifier {
            what,
            value: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_schema_qualified_names() {
        let spec = TableSpec::builder("app.jobs").build().expect("valid");
        assert_eq!(spec.table, "\"app\".\"jobs\"");
        assert_eq!(spec.next_attempt_at, "\"next_attempt_at\"");
    }

    #[test]
    fn rejects_injection_and_odd_names() {
        for bad in [
            "",
            "1jobs",
            "jobs\"; DROP TABLE x; --",
            "a.b.c",
            "jobs ",
            "j\u{e9}",
            &"x".repeat(64),
        ] {
            let err = TableSpec::builder(bad).build().expect_err(bad);
            assert!(
                matches!(err, Error::InvalidIdentifier { what: "table", .. }),
                "{bad}"
            );
        }
        let err = TableSpec::builder("jobs")
            .owner_column("owner--")
            .build()
            .expect_err("bad column");
        assert!(err.to_string().contains("owner column"), "{err}");
    }
}
