//! Savings of finished days, kept once priced (see `domain::savings`): a
//! trigger on `signal_point` forgets a day whose signals change.

use chrono::NaiveDate;
use heliotrope_api_spec::DaySavings;
use sqlx::PgExecutor;

use super::Result;

/// A finished day's figures, whether synthetic signals priced them, and the price currency.
#[derive(Debug, Clone, PartialEq)]
pub struct KeptDay {
    pub figures: DaySavings,
    pub synthetic: bool,
    pub currency: Option<String>,
}

#[derive(sqlx::FromRow)]
struct DayRow {
    day: NaiveDate,
    cost_saved: f64,
    kg_saved: f64,
    migrations: i64,
    vm_hours: i64,
    synthetic: bool,
    currency: Option<String>,
}

/// The kept days from `from` to `to`, both included, in order.
pub async fn kept(db: impl PgExecutor<'_>, from: NaiveDate, to: NaiveDate) -> Result<Vec<KeptDay>> {
    let rows: Vec<DayRow> = sqlx::query_as(
        "select day, cost_saved, kg_saved, migrations, vm_hours, synthetic, currency \
         from savings_day where day between $1 and $2 order by day",
    )
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| KeptDay {
            figures: DaySavings {
                day: r.day,
                cost_saved: r.cost_saved,
                kg_saved: r.kg_saved,
                migrations: u64::try_from(r.migrations).unwrap_or(0),
                vm_hours: u64::try_from(r.vm_hours).unwrap_or(0),
            },
            synthetic: r.synthetic,
            currency: r.currency,
        })
        .collect())
}

/// Keeps finished days' figures (replacing what was kept for them).
pub async fn keep(db: impl PgExecutor<'_>, days: &[KeptDay]) -> Result<()> {
    if days.is_empty() {
        return Ok(());
    }
    let field = |f: fn(&KeptDay) -> f64| days.iter().map(f).collect::<Vec<_>>();
    let count =
        |f: fn(&KeptDay) -> u64| days.iter().map(|d| i64::try_from(f(d)).unwrap_or(i64::MAX)).collect::<Vec<_>>();
    sqlx::query(
        "insert into savings_day (day, cost_saved, kg_saved, migrations, vm_hours, synthetic, currency) \
         select * from unnest($1::date[], $2::float8[], $3::float8[], $4::int8[], $5::int8[], $6::bool[], $7::text[]) \
         on conflict (day) do update set cost_saved = excluded.cost_saved, kg_saved = excluded.kg_saved, \
           migrations = excluded.migrations, vm_hours = excluded.vm_hours, synthetic = excluded.synthetic, \
           currency = excluded.currency, priced_at = now()",
    )
    .bind(days.iter().map(|d| d.figures.day).collect::<Vec<_>>())
    .bind(field(|d| d.figures.cost_saved))
    .bind(field(|d| d.figures.kg_saved))
    .bind(count(|d| d.figures.migrations))
    .bind(count(|d| d.figures.vm_hours))
    .bind(days.iter().map(|d| d.synthetic).collect::<Vec<_>>())
    .bind(days.iter().map(|d| d.currency.clone()).collect::<Vec<_>>())
    .execute(db)
    .await?;
    Ok(())
}
