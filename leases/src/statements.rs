//! The SQL of every row-lease statement, written from a [`TableSpec`]. The predicate that says a
//! lease is still held ([`held`]) is written here and nowhere else: every statement that changes a
//! leased row, the crate's own and those that also set a caller's columns, goes through it.
//!
//! In a table with group columns, a claim writes only each run's head: the head's lease (owner,
//! token, expiry) is the lease of every row of its run, which is fenced through the head.

use std::sync::Arc;

use crate::sql::renumbered;
use crate::table::{Completion, TableSpec};
use crate::{Error, Result};

/// How [`RowLeases::claim_key_query`](crate::RowLeases::claim_key_query) inserts a row or claims
/// the existing one with the same key.
///
/// Every field is SQL written by the crate's user (`&'static str`, never input). Its parameters
/// are numbered from `$1` across all fields, their values given to the claim as
/// [`Binds`](crate::Binds); the statement binds its own (now, owner, ttl) before them. The
/// lease columns (owner, token, expiry, and attempts and due time on a scheduled table) are set by
/// the statement itself.
#[derive(Debug, Clone, Copy)]
pub struct KeyClaim {
    /// The unique key, the `ON CONFLICT` target: `"scope, route, idempotency_key"`.
    pub conflict: &'static str,
    /// The caller's columns of a new row: `"scope, route, idempotency_key, created_at"`.
    pub columns: &'static str,
    /// Their values, in order; `claim.now` is the claim's time: `"$1, $2, $3, claim.now"`.
    pub values: &'static str,
    /// More `FROM` items for `values`, after `claim` (usually `""`): `", other_table AS o"`.
    pub from: &'static str,
    /// Assignments made when an existing row is claimed, over `excluded` (the new values), for
    /// example `"created_at = excluded.created_at, result = NULL"`; `""` for none.
    pub on_claim: &'static str,
    /// When an existing row whose lease is free (never held, released, finished or expired) may be
    /// claimed, referring to it by the table's name and to the new values as `excluded`; `"true"`
    /// for always. A row whose lease is valid is never claimed, whatever this says.
    pub claim_when: &'static str,
}

/// "Now" in a claim (`$1`) and in a statement over held leases (`$4`). A statement over held
/// leases binds `$1` ids, `$2` tokens, `$3` owner, `$4` now, `$5` an interval and `$6` the ids of
/// the rows holding the leases (see [`held`]); the caller's parameters follow, renumbered from
/// its `$1` ([`Sql`](crate::Sql)).
const NOW_CLAIM: &str = "coalesce($1::timestamptz, statement_timestamp())";
const NOW_HELD: &str = "coalesce($4::timestamptz, statement_timestamp())";

/// The fixed statements of one table, written once when a [`RowLeases`](crate::RowLeases) is made.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) spec: TableSpec,
    /// `None` for a table without a schedule, which is never claimed in due order.
    pub(crate) claim: Option<Arc<str>>,
    pub(crate) claim_rows: Option<Arc<str>>,
    pub(crate) renew: Arc<str>,
    pub(crate) release: Arc<str>,
    pub(crate) complete: Arc<str>,
}

impl Statements {
    pub(crate) fn new(spec: &TableSpec) -> Self {
        Statements {
            claim: spec.scheduled.then(|| claim(spec, false).into()),
            claim_rows: spec.scheduled.then(|| claim(spec, true).into()),
            renew: renew(spec).into(),
            release: release(spec, "").into(),
            complete: complete(spec, "")
                .expect("completion without caller columns is always valid")
                .into(),
            spec: spec.clone(),
        }
    }
}

/// Whether the table claims runs through their heads: it has group columns and a schedule.
fn in_runs(t: &TableSpec) -> bool {
    !t.group.is_empty() && t.scheduled
}

/// The one fencing predicate, over the row aliased `t`: its id is among `$1`, and the row holding
/// its lease (at the same position in `$6`) has the token at that position in `$2`, owner `$3`,
/// and a lease that is not finished. The holder is the row itself, or, when the table claims in
/// runs, its run's head: a run's member is held while it is unfinished and a head of its group
/// among the holders is held. The heads are read `FOR SHARE`, so a claim that takes one over
/// waits for the statement, or the statement for the claim (and then finds the new token).
///
/// The plan must not depend on the statistics. The rows are found through the key index
/// (`id = ANY`), and each is looked up in a hash built once: the membership tests are wrapped in
/// `IS TRUE`, so PostgreSQL cannot turn them into joins (a join with the pairs becomes a nested
/// loop, quadratic in the batch, when the statistics are stale) and runs them as hashed
/// subplans. Measured with generic plans at batch 1000: 5 ms with fresh or stale statistics,
/// where the semi-join took 185 ms with stale ones and looking the token up by position
/// (`$2[array_position($1, id)]`, linear per row) 22 ms.
fn held(t: &TableSpec) -> String {
    let TableSpec {
        table,
        id,
        next_attempt_at,
        ..
    } = t;
    if !in_runs(t) {
        // The holders in `$6` are the rows themselves.
        return format!("WHERE {}", holds(t, "t", "$1"));
    }
    format!(
        "WHERE t.{id} = ANY($1) AND t.{next_attempt_at} IS NOT NULL
           AND (({t_group}) IN (SELECT {h_group} FROM {table} h WHERE {holds} FOR SHARE)) IS TRUE",
        t_group = group_of(t, "t"),
        h_group = group_of(t, "h"),
        holds = holds(t, "h", "$6"),
    )
}

/// The row `row`, one of `ids`, holds a lease of the `$6` and `$2` pairs, under owner `$3`.
fn holds(t: &TableSpec, row: &str, ids: &str) -> String {
    let TableSpec {
        id,
        owner,
        token,
        expires_at,
        ..
    } = t;
    format!(
        "{row}.{id} = ANY({ids})
         AND (({row}.{id}, {row}.{token}) IN (SELECT * FROM unnest($6, $2::int8[]))) IS TRUE
         AND {row}.{owner} = $3 AND {row}.{expires_at} IS NOT NULL"
    )
}

/// Extends held leases: in runs, the heads only, whose expiry is their members'. Returns each
/// renewed holder's id and new expiry.
fn renew(t: &TableSpec) -> String {
    let TableSpec {
        table,
        id,
        expires_at,
        ..
    } = t;
    let extend = format!("{expires_at} = {NOW_HELD} + $5::interval");
    if !in_runs(t) {
        return format!(
            "UPDATE {table} AS t SET {extend} {} RETURNING t.{id}, t.{expires_at}",
            held(t)
        );
    }
    format!(
        "UPDATE {table} AS h SET {extend} WHERE {} RETURNING h.{id}, h.{expires_at}",
        holds(t, "h", "$6")
    )
}

/// `a.g1, a.g2` over the group columns.
fn group_of(t: &TableSpec, alias: &str) -> String {
    t.group
        .iter()
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The lease's columns under the fixed aliases `Lease` decodes, whatever the table calls them.
/// A table without a schedule reports its token as the attempt count.
fn lease_columns(t: &TableSpec, prefix: &str) -> String {
    let TableSpec {
        id,
        token,
        expires_at,
        attempts,
        ..
    } = t;
    let attempts = if t.scheduled {
        format!("{prefix}{attempts}")
    } else {
        format!("least({prefix}{token}, 2147483647)::int4")
    };
    format!(
        "{prefix}{id} AS lease_id, {prefix}{token} AS lease_token, {prefix}{expires_at} AS lease_expires_at, {attempts} AS lease_attempts, {prefix}{id} AS lease_holder"
    )
}

/// Claims due rows: `$1` now, `$2` owner, `$3` limit, `$4` ttl, `$5` the due time the walk of
/// the due index starts from (`NULL`: its head, see [`ClaimCursor`](crate::cursor::ClaimCursor)).
/// The candidate row is not aliased, so a claim filter refers to it by the table's own name. Each
/// claimed row returns its lease's columns, its due time as `lease_due`, and with `rows` the
/// whole row first.
fn claim(t: &TableSpec, rows: bool) -> String {
    let TableSpec {
        table,
        id,
        owner,
        token,
        expires_at,
        attempts,
        next_attempt_at,
        ..
    } = t;
    let filter = t
        .claim_filter
        .map(|f| format!("AND ({f})"))
        .unwrap_or_default();
    let free = |row: &str| {
        format!(
            "{row}{next_attempt_at} <= {NOW_CLAIM}
             AND ({row}{expires_at} IS NULL OR {row}{expires_at} <= {NOW_CLAIM})"
        )
    };
    let due = format!(
        "SELECT {table}.{id}, {table}.{token}{group} FROM {table}
         WHERE {free} AND {next_attempt_at} >= coalesce($5::timestamptz, '-infinity')
           {filter} {head}
         ORDER BY {next_attempt_at}, {id}
         LIMIT $3
         FOR UPDATE SKIP LOCKED",
        group = t
            .group
            .iter()
            .map(|c| format!(", {table}.{c}"))
            .collect::<String>(),
        free = free(""),
        head = if t.group.is_empty() {
            String::new()
        } else {
            // `OFFSET 0` keeps the probe a per-row subplan: as an anti-join PostgreSQL may hash
            // the groups, which is quadratic in a group's backlog (17 s for 20,000 rows of one
            // group, against 2 ms as a probe).
            let older = same_group(t, "older", table);
            format!(
                "AND NOT EXISTS (SELECT 1 FROM {table} older
                 WHERE {older} AND older.{id} < {table}.{id} AND older.{next_attempt_at} IS NOT NULL
                 OFFSET 0)"
            )
        }
    );
    let lease = format!(
        "{owner} = $2, {token} = t.{token} + 1, {attempts} = t.{attempts} + 1,
         {expires_at} = {NOW_CLAIM} + $4::interval"
    );
    if t.group.is_empty() {
        let row = if rows { "t.*, " } else { "" };
        return format!(
            "WITH due AS ({due})
             UPDATE {table} AS t SET {lease}
             FROM due WHERE t.{id} = due.{id}
             RETURNING {row}{}, t.{next_attempt_at} AS lease_due",
            lease_columns(t, "t.")
        );
    }
    // Each head with the rows after it in its group while they are free (at most `$3` rows
    // scanned per group, `$3` in all); the cut keeps each run's first rows (`pos = n`). Only the
    // heads are written: a member returns its head's lease, and the attempt its claim makes. The
    // heads are locked, so their update sets the token and expiry the members report, which are
    // written out rather than joined (a join with the claimed heads is a nested loop, quadratic
    // in the batch, under a generic plan). A member that still carries an expired lease of its
    // own (a head whose holder went away, now behind a row committed late with a smaller id)
    // loses it: its token moves on, so its old holder can no longer change the run.
    let (head_row, member_row) = if rows { ("h.*, ", "m.*, ") } else { ("", "") };
    format!(
        "WITH heads AS ({due}),
         runs AS (
            SELECT run.{id}, heads.{id} AS head, heads.{token} AS head_token, run.pos, run.leased
            FROM heads CROSS JOIN LATERAL (
                SELECT {id}, pos, leased FROM (
                    SELECT m.{id}, row_number() OVER w AS pos, bool_and({free}) OVER w AS open,
                           m.{expires_at} IS NOT NULL AS leased
                    FROM (SELECT m.* FROM {table} m
                          WHERE {same} AND m.{id} >= heads.{id} AND m.{next_attempt_at} IS NOT NULL
                          ORDER BY m.{id} LIMIT $3) m
                    WINDOW w AS (ORDER BY m.{id})
                ) member WHERE open
            ) run
            LIMIT $3
         ),
         due AS (
            SELECT {id}, head, head_token, leased FROM (
                SELECT {id}, head, head_token, leased, pos,
                       row_number() OVER (PARTITION BY head ORDER BY pos) AS n
                FROM runs
            ) cut WHERE pos = n
         ),
         taken_over AS (
            UPDATE {table} AS t SET {token} = t.{token} + 1, {owner} = NULL, {expires_at} = NULL
            FROM due WHERE due.leased AND due.{id} <> due.head AND t.{id} = due.{id}
         ),
         claimed AS (
            UPDATE {table} AS t SET {lease}
            FROM due WHERE t.{id} = due.{id} AND due.{id} = due.head
            RETURNING t.*
         )
         SELECT {head_row}{head_lease}, h.{next_attempt_at} AS lease_due FROM claimed h
         UNION ALL
         SELECT {member_row}m.{id} AS lease_id, due.head_token + 1 AS lease_token,
                {NOW_CLAIM} + $4::interval AS lease_expires_at, m.{attempts} + 1 AS lease_attempts,
                due.head AS lease_holder, m.{next_attempt_at} AS lease_due
         FROM due JOIN {table} m ON m.{id} = due.{id}
         WHERE due.{id} <> due.head",
        free = free("m."),
        same = same_group(t, "m", "heads"),
        head_lease = lease_columns(t, "h."),
    )
}

/// `a.g1 = b.g1 AND a.g2 = b.g2` over the group columns.
fn same_group(t: &TableSpec, a: &str, b: &str) -> String {
    t.group
        .iter()
        .map(|c| format!("{a}.{c} = {b}.{c}"))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Gives held leases back, due again `$5` (an interval) from now, also setting `set`. A run's
/// member, whose claim did not count its attempt, counts it here.
pub(crate) fn release(t: &TableSpec, set: &str) -> String {
    let TableSpec {
        table,
        id,
        owner,
        expires_at,
        attempts,
        next_attempt_at,
        ..
    } = t;
    let due = format!("{next_attempt_at} = {NOW_HELD} + $5::interval");
    let member_attempt = format!("{attempts} = t.{attempts} + (t.{id} <> ALL($6))::int4");
    let sets = assignments(&[
        &format!("{owner} = NULL, {expires_at} = NULL"),
        if t.scheduled { &due } else { "" },
        if in_runs(t) { &member_attempt } else { "" },
        set,
    ]);
    format!(
        "UPDATE {table} AS t SET {sets} {} RETURNING t.{id}",
        held(t)
    )
}

/// Finishes held leases as the table's [`Completion`] says, also setting `set` (only a kept row
/// has columns left to set).
pub(crate) fn complete(t: &TableSpec, set: &str) -> Result<String> {
    let TableSpec { table, id, .. } = t;
    match t.completion {
        Completion::Delete if set.trim().is_empty() => Ok(format!(
            "DELETE FROM {table} AS t {} RETURNING t.{id}",
            held(t)
        )),
        Completion::Delete => Err(Error::InvalidConfig(
            "completing with columns to set needs a table with Completion::Keep".into(),
        )),
        Completion::Keep => {
            let sets = assignments(&[&t.finished(NOW_HELD), set]);
            Ok(format!(
                "UPDATE {table} AS t SET {sets} {} RETURNING t.{id}",
                held(t)
            ))
        }
    }
}

/// Deletes held leases' rows and runs `insert` over them, as the CTE `moved`.
pub(crate) fn move_rows(t: &TableSpec, insert: &str) -> String {
    format!(
        "WITH moved AS (DELETE FROM {} AS t {} RETURNING t.*) {insert}",
        t.table,
        held(t)
    )
}

/// Inserts a row by key, or claims the existing one when its lease is free and `claim.claim_when`
/// holds: `$1` now, `$2` owner, `$3` ttl, then the claim's `count` parameters.
pub(crate) fn claim_key(t: &TableSpec, claim: &KeyClaim, count: usize) -> Result<String> {
    let TableSpec {
        table,
        owner,
        token,
        expires_at,
        attempts,
        next_attempt_at,
        ..
    } = t;
    let [conflict, columns, values, from, on_claim, claim_when] = renumbered(
        &[
            claim.conflict,
            claim.columns,
            claim.values,
            claim.from,
            claim.on_claim,
            claim.claim_when,
        ],
        3,
        count,
    )?;
    let (schedule_columns, schedule_values, schedule_sets) = if t.scheduled {
        (
            format!(", {attempts}, {next_attempt_at}"),
            ", 1, NULL",
            format!("{attempts} = {table}.{attempts} + 1, {next_attempt_at} = NULL"),
        )
    } else {
        (String::new(), "", String::new())
    };
    let sets = assignments(&[
        &format!(
            "{owner} = excluded.{owner}, {token} = {table}.{token} + 1, {expires_at} = excluded.{expires_at}"
        ),
        &schedule_sets,
        &on_claim,
    ]);
    Ok(format!(
        "INSERT INTO {table} ({columns}, {owner}, {token}, {expires_at}{schedule_columns})
         SELECT {values}, $2, 1, claim.now + $3::interval{schedule_values}
         FROM (SELECT {NOW_CLAIM} AS now) AS claim {from}
         ON CONFLICT ({conflict}) DO UPDATE SET {sets}
         WHERE ({table}.{expires_at} IS NULL OR {table}.{expires_at} <= {NOW_CLAIM})
           AND ({claim_when})
         RETURNING {}",
        lease_columns(t, "")
    ))
}

/// `a, b, c` from the non-empty parts.
fn assignments(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|part| part.trim())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}
