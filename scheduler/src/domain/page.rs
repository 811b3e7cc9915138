//! Keyset pagination. A cursor is opaque to clients; inside it is the id of
//! the last item of the previous page, so pages stay stable while rows are
//! added and the database walks an index instead of an offset.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use heliotrope_api_spec::{PageParams, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};

use super::ValidationError;

/// Which page a client asked for, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Items on the page.
    pub limit: u32,
    /// Items with ids above this one come next (0 for the first page).
    pub after_id: i64,
}

/// One page of items and where the next one starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

const CURSOR_PREFIX: &str = "id:";

impl PageRequest {
    pub fn parse(params: &PageParams) -> Result<Self, ValidationError> {
        let limit = params.limit.unwrap_or(DEFAULT_PAGE_LIMIT);
        if !(1..=MAX_PAGE_LIMIT).contains(&limit) {
            return Err(ValidationError::new("limit", format!("must be between 1 and {MAX_PAGE_LIMIT}")));
        }
        let after_id = match &params.cursor {
            None => 0,
            Some(cursor) => decode_cursor(cursor)
                .ok_or_else(|| ValidationError::new("cursor", "is not a cursor this server issued"))?,
        };
        Ok(PageRequest { limit, after_id })
    }

    /// Cuts `rows` (fetched with `limit + 1`, ordered by id) to one page.
    pub fn page<T>(&self, mut rows: Vec<T>, id_of: impl Fn(&T) -> i64) -> Page<T> {
        let next_cursor = if rows.len() > self.limit as usize {
            rows.truncate(self.limit as usize);
            rows.last().map(|last| encode_cursor(id_of(last)))
        } else {
            None
        };
        Page { items: rows, next_cursor }
    }

    /// How many rows to fetch: one more than the page, to learn whether another follows.
    pub fn fetch_limit(&self) -> i64 {
        i64::from(self.limit) + 1
    }
}

fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{id}"))
}

fn decode_cursor(cursor: &str) -> Option<i64> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let id: i64 = text.strip_prefix(CURSOR_PREFIX)?.parse().ok()?;
    (id >= 0).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(limit: Option<u32>, cursor: Option<&str>) -> PageParams {
        PageParams { limit, cursor: cursor.map(str::to_owned) }
    }

    #[test]
    fn cursor_round_trips() {
        let req = PageRequest::parse(&params(Some(2), None)).unwrap();
        let page = req.page(vec![10_i64, 11, 12], |id| *id);
        assert_eq!(page.items, vec![10, 11]);
        let next = PageRequest::parse(&params(Some(2), page.next_cursor.as_deref())).unwrap();
        assert_eq!(next.after_id, 11);
    }

    #[test]
    fn last_page_has_no_cursor() {
        let req = PageRequest::parse(&params(Some(3), None)).unwrap();
        assert_eq!(req.page(vec![1_i64, 2, 3], |id| *id).next_cursor, None);
    }

    #[test]
    fn rejects_bad_limits_and_forged_cursors() {
        assert_eq!(PageRequest::parse(&params(Some(0), None)).unwrap_err().field, "limit");
        assert_eq!(PageRequest::parse(&params(Some(1001), None)).unwrap_err().field, "limit");
        for bad in ["", "!!", "aWQ6LTE", "Zm9vOjE", "aWQ6eA"] {
            assert_eq!(PageRequest::parse(&params(None, Some(bad))).unwrap_err().field, "cursor", "{bad}");
        }
    }
}
