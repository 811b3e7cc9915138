//! Cursor pagination: every list endpoint takes `limit` and an opaque
//! `cursor`, and answers with one page of items and the cursor of the next.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Largest page a client may ask for.
pub const MAX_PAGE_LIMIT: u32 = 1000;
/// Page size when the client does not say.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;

/// Query parameters shared by every list endpoint.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page; absent for the first page.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
}

macro_rules! page_type {
    ($(#[$doc:meta])* $page:ident, $item:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
        pub struct $page {
            pub items: Vec<$item>,
            /// Pass as `cursor` to get the next page; null on the last page.
            pub next_cursor: Option<String>,
        }
    };
}

page_type!(/// One page of sites.
    SitePage, crate::Site);
page_type!(/// One page of links.
    LinkPage, crate::Link);
page_type!(/// One page of VMs.
    VmPage, crate::Vm);
page_type!(/// One page of VM groups.
    GroupPage, crate::Group);
page_type!(/// One page of executors.
    ExecutorPage, crate::Executor);
page_type!(/// One page of API tokens (never their secrets).
    TokenPage, crate::Token);
page_type!(/// One page of feeds.
    FeedPage, crate::Feed);
page_type!(/// One page of plans.
    PlanPage, crate::PlanSummary);
page_type!(/// One page of migrations.
    MigrationPage, crate::Migration);
page_type!(/// One page of simulations (without their reports).
    SimulationPage, crate::Simulation);
