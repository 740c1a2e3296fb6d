//! No code: this crate holds the end-to-end tests (tests/), which run the workspace's
//! tool binaries and examples/ together inside sandbox network namespaces.
