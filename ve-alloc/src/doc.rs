//! ve-alloc's manual beyond its options: exit status, environment, files, examples
//! (shown after `--help` and rendered into the man page by `cargo xtask dist`).

use common::{
    doc::{entry, exit, Manual},
    Exit,
};

pub const MANUAL: Manual = Manual {
    exits: &[
        exit(Exit::Ok, ""),
        exit(
            Exit::Differs,
            "CNI CHECK: the previous result lacks the address the attachment holds",
        ),
        exit(
            Exit::Usage,
            "a missing or unknown argument, several alloc names without --json, --wait out of range, a --store that is a database file or a URL other than a valid etcd:// or etcd+tls://, a bad --node, --node-address or --block-size, --etcd-cert without --etcd-key (or the other way round), TLS files for a plain etcd:// store, gc with no names on a terminal",
        ),
        exit(
            Exit::DataErr,
            "a malformed NAME, address or pool, a bad import file, an address or interface name already leased, host address equal to local, gc with an empty list of live names (without --all-gone)",
        ),
        exit(
            Exit::NoInput,
            "no lease for NAME (show, show-ip), a named config file, import directory or etcd TLS file (--etcd-cacert, --etcd-cert, --etcd-key) missing",
        ),
        exit(
            Exit::Unavailable,
            "no etcd endpoint of an etcd:// store answered within --wait (nothing printed; also etcd:// to members that serve TLS only)",
        ),
        exit(Exit::Software, "a bug in ve-alloc"),
        exit(Exit::OsErr, "a system call failed"),
        exit(
            Exit::CantCreate,
            "the address pool is exhausted (etcd: this node's blocks are full and every other block is claimed)",
        ),
        exit(
            Exit::IoErr,
            "the store cannot be read or written, is corrupt (it is never reset), or is not a directory",
        ),
        exit(
            Exit::TempFail,
            "another process held the store locked longer than --wait; etcd answered but did not commit within --wait (no quorum: nothing printed), or other writers kept winning the race for the same keys past --wait (a lost race is only counted on a linearizable view: --wait 0 still decides as SQLite does)",
        ),
        exit(
            Exit::NoPerm,
            "no permission to read or write the store or a TLS file; etcd refused --etcd-user or its password, wants a user and none was given, or refused the client certificate (--etcd-cert) or its absence",
        ),
        exit(
            Exit::Config,
            "a bad config file, a store written by another version or program, or a --block-size other than the fleet's; a TLS file without a PEM certificate or key, a key that is not the certificate's, or an etcd member whose certificate --etcd-cacert does not vouch for",
        ),
    ],
    env: &[
        entry(
            "CNI_COMMAND",
            "When set (ADD, DEL, CHECK, VERSION, STATUS, GC), ve-alloc is a CNI IPAM plugin: configuration on stdin (store required), CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS, CNI_ARGS (K8S_POD_NAME names the lease) from the environment, the result or CNI error JSON on stdout",
        ),
        entry("VE_ALLOC_STORE", "Store directory or etcd:// (etcd+tls://) URL, as --store"),
        entry("VE_ALLOC_NODE", "This host's node name in an etcd store, as --node"),
        entry(
            "VE_ALLOC_NODE_ADDRESS",
            "Where other nodes route to this node's containers, as --node-address",
        ),
        entry("VE_ALLOC_BLOCK_SIZE", "Block prefix length in an etcd store, as --block-size"),
        entry("VE_ALLOC_ETCD_USER", "etcd user name, as --etcd-user"),
        entry(
            "VE_ALLOC_ETCD_PASSWORD_FILE",
            "File with the etcd user's password, as --etcd-password-file",
        ),
        entry(
            "VE_ALLOC_ETCD_CACERT",
            "CA bundle of an etcd+tls:// store, as --etcd-cacert",
        ),
        entry("VE_ALLOC_ETCD_CERT", "Client certificate for etcd, as --etcd-cert"),
        entry("VE_ALLOC_ETCD_KEY", "Key of the client certificate, as --etcd-key"),
        entry("VE_ALLOC_POOL", "IPv4 pool, as --pool"),
        entry("VE_ALLOC_POOL6", "IPv6 pool, as --pool6"),
        entry("VE_ALLOC_LAYOUT", "Layout of the IPv4 pool, as --layout"),
        entry(
            "VE_ALLOC_DURABILITY",
            "What a printed lease survives in a SQLite store, as --durability: full (default; a power cut) or normal (a kill only: writes are not synced). Ignored with an etcd store (as is DURABILITY= in the config file), which refuses the --durability flag (64)",
        ),
        entry("VE_ALLOC_CONFIG", "Configuration file, as --config"),
    ],
    files: &[
        entry(
            "/etc/ve-alloc.conf",
            "Configuration, when it exists: KEY=value lines STORE, POOL, POOL6, LAYOUT, DURABILITY, and for an etcd store NODE, NODE_ADDRESS, BLOCK_SIZE, ETCD_USER, ETCD_PASSWORD_FILE, ETCD_CACERT, ETCD_CERT, ETCD_KEY",
        ),
        entry(
            "/etc/ssl/certs/ca-certificates.crt",
            "The CA bundle an etcd+tls:// store trusts when --etcd-cacert is not given",
        ),
        entry(
            "/var/lib/ve-alloc/leases.db",
            "The lease store (SQLite, with its -wal and -shm files; directory 0750, files 0640); \
             --store DIR moves it",
        ),
        entry(
            "@ve-alloc/etcd-node/HASH",
            "An abstract Unix socket (no file) a command holds while it writes to an etcd \
             store, named after the store and node: the writers of one node in one network \
             namespace take turns instead of losing commits to each other; a writer that \
             waits longer than one request timeout (or half its --wait) goes on without its turn, \
             and so does one that finds the name bound by another user or by a socket that \
             does not listen",
        ),
    ],
    examples: &[
        entry(
            "ve-alloc alloc web",
            "Lease web an address pair (the same one again next time) and print it as \
             HOST_ADDRESS=... LOCAL_ADDRESS=... lines",
        ),
        entry(
            "ve-alloc alloc web | ve-link up web --netns web --addresses -",
            "Lease and plumb in one pipeline",
        ),
        entry(
            "ve-alloc alloc c1 c2 c3 --json | ve-link up --from -",
            "Lease several containers in one transaction (one JSON line each) and bring them \
             all up in one ve-link process. On an etcd store any number of names is split \
             into transactions within etcd's 128 operations (22 long names with IPv6 to 37 \
             short ones each), each all or none; an interface-name clash is found before the \
             first (nothing kept). One that fails partway (etcd trouble, an exhausted pool) \
             prints nothing and keeps the leases of the transactions committed before it; \
             the same command again prints every lease",
        ),
        entry(
            "ve-alloc --store etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379/fleet --node-address 10.0.0.11 alloc web",
            "Lease web a pair unique across a fleet of hosts sharing one etcd cluster: this \
             host (node: its hostname, or --node) hands out pairs from /26 blocks it claims \
             under the key prefix /fleet; list, show, show-ip and release see the whole fleet, \
             gc this node's leases",
        ),
        entry(
            "ve-alloc --store etcd+tls://10.0.0.1:2379,10.0.0.2:2379/fleet --etcd-cacert ca.pem --etcd-cert client.pem --etcd-key client-key.pem alloc web",
            "The same over TLS, to members started with --cert-file, --key-file, \
             --trusted-ca-file and --client-cert-auth (https:// client URLs); a certificate \
             etcd refuses is 77, a member certificate ca.pem did not sign 78, both at once",
        ),
        entry(
            "ve-alloc --store etcd://10.0.0.1:2379/fleet node release old-host",
            "A host of the fleet is gone for good: release its dynamic leases and free its \
             blocks for the other nodes (a directory store has no nodes: exit 64). Each \
             released lease is printed as it goes, so one that fails partway has printed \
             what it freed; run it again to finish",
        ),
        entry(
            "ve-alloc --store etcd://10.0.0.1:2379/fleet routes",
            "The blocks of the fleet's other nodes, `10.233.0.64/26 via 10.0.0.12` per line \
             (--json: JSON Lines with the node's name)",
        ),
        entry(
            "ve-alloc --store etcd://10.0.0.1:2379/fleet routes --watch | ve-link routes --from - --follow",
            "Keep this host's routes to the other nodes' blocks current: the whole set again, \
             then a blank line, each time a block is claimed or freed (through etcd's watch; \
             --json: one {\"revision\",\"routes\"} line per set). It retries etcd trouble for \
             ever after the first set (the routes stay as they were meanwhile) and ends, 0, \
             when its reader does",
        ),
        entry("ve-alloc show-ip web", "Print web's container address"),
        entry("ve-alloc list --hosts", "/etc/hosts lines for every lease"),
        entry(
            "ve-alloc reserve mail --host-address 10.233.9.2 --local-address 10.233.9.3",
            "Record a static lease with chosen addresses",
        ),
        entry(
            "ls /var/lib/machines | ve-alloc gc",
            "Release the dynamic leases of containers that no longer exist (an empty list \
             is refused; --all-gone says it is meant)",
        ),
        entry(
            "ve-link gc | ve-alloc release -",
            "Release the leases of the containers whose pairs ve-link gc removed (where a gone namespace means a container removed for good)",
        ),
        entry(
            "ve-alloc import /etc/nixos-containers",
            "Turn NixOS container conf files into static leases, all or none. On an etcd \
             store every file is checked against the store first (a conflict records \
             nothing), then they are recorded in transactions within etcd's 128 operations: \
             only etcd trouble or another writer meanwhile can stop it partway, with the \
             files of the committed transactions recorded; importing again records the \
             rest (a lease already there is a no-op)",
        ),
    ],
};
