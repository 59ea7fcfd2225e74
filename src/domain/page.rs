//! Keyset pagination, shared by every list: the store pages with it, core hands pages to the
//! edges, and the gRPC layer turns `after` into its opaque tokens.

/// A page of results and the cursor for the next one.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The page's items, at most the request's `limit`.
    pub items: Vec<T>,
    /// Pass back as [`PageRequest::after`] to get the next page; `None` at the end.
    pub next_page_token: Option<String>,
}

/// Paging request. `after` is the last id of the previous page (keyset pagination: stable
/// under concurrent inserts).
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    /// Max items, already clamped by the caller.
    pub limit: u32,
    /// Return ids strictly greater than this.
    pub after: Option<String>,
}

impl<T> Page<T> {
    /// The same page with every item converted (the cursor is unchanged).
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page { items: self.items.into_iter().map(f).collect(), next_page_token: self.next_page_token }
    }
}
