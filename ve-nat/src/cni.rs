//! `ve-nat` under a CNI runtime (`CNI_COMMAND` set): it answers VERSION, so a runtime
//! that loads a conflist naming it can list its versions. Its other verbs are not in
//! this version: each gets a CNI error (code 4) saying so, and nothing changes.

/// Run one CNI call.
pub fn run() -> common::Result<()> {
    common::cni::serve("ve-nat", |req| {
        Err(common::cni::unsupported("ve-nat", req.verb))
    })
}
