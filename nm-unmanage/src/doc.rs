//! nm-unmanage's manual beyond its options: exit status, environment, files, examples
//! (shown after `--help` and rendered into the man page by `cargo xtask dist`).

use common::{
    doc::{entry, exit, Manual},
    Exit,
};

pub const MANUAL: Manual = Manual {
    exits: &[
        exit(
            Exit::Ok,
            "also when nothing matched; with --if-running when no network manager is \
             running or answering; when systemd-networkd was handled and NetworkManager \
             does not run (a missing --conf-dir is then skipped)",
        ),
        exit(
            Exit::Differs,
            "CNI CHECK: NetworkManager or systemd-networkd manages a host interface of the previous result",
        ),
        exit(
            Exit::Usage,
            "a missing or unknown argument, a bad --bus-address",
        ),
        exit(
            Exit::DataErr,
            "a malformed or too broad PATTERN, or one that has no systemd-networkd Name= glob",
        ),
        exit(
            Exit::NoInput,
            "the --conf-dir drop-in directory does not exist (skipped when NetworkManager \
             does not run and systemd-networkd was handled)",
        ),
        exit(
            Exit::Unavailable,
            "the bus is not there, or neither NetworkManager nor systemd-networkd runs (with \
             --manager: the one named), or it does not answer in time",
        ),
        exit(
            Exit::Software,
            "NetworkManager refused a call as malformed (a bug in nm-unmanage)",
        ),
        exit(
            Exit::OsErr,
            "NetworkManager failed a request",
        ),
        exit(Exit::CantCreate, "no free temporary name for a drop-in"),
        exit(
            Exit::IoErr,
            "writing or removing a drop-in or networkd's file failed",
        ),
        exit(
            Exit::NoPerm,
            "the bus, NetworkManager or systemd-networkd denied access, or a directory to \
             write is not writable",
        ),
        exit(
            Exit::Config,
            "a drop-in directory or --networkd-dir that is group- or world-writable, not \
             owned by root or this user, or not a directory",
        ),
    ],
    env: &[
        entry(
            "CNI_COMMAND",
            "When set (ADD, DEL, CHECK, VERSION, STATUS, GC), nm-unmanage is a chained CNI plugin: it keeps every network manager that runs (NetworkManager, systemd-networkd) off the host interfaces of prevResult, as the one-shot does (bus: the configuration's busAddress, else DBUS_SYSTEM_BUS_ADDRESS; networkd's file: the configuration's networkdDir, else /run/systemd/network), and prints prevResult",
        ),
        entry(
            "DBUS_SYSTEM_BUS_ADDRESS",
            "The system bus, as --bus-address (default unix:path=/run/dbus/system_bus_socket)",
        ),
        entry(
            "NM_UNMANAGE_TIMEOUT",
            "Seconds to wait for the bus and for each NetworkManager call, as --timeout (default 5)",
        ),
        entry(
            "NM_UNMANAGE_RUNTIME_DIR",
            "Where --watch and --runtime write their runtime drop-in, as --runtime-dir",
        ),
        entry(
            "NOTIFY_SOCKET",
            "Set by systemd for Type=notify: --watch sends READY=1 once its drop-in is in place",
        ),
    ],
    files: &[
        entry(
            "/etc/NetworkManager/conf.d/90-nm-unmanage.conf",
            "The drop-in --persist writes and --remove deletes (--conf-dir moves it)",
        ),
        entry(
            "/run/NetworkManager/conf.d/90-nm-unmanage-watch.conf",
            "The runtime drop-in --watch writes before it starts watching and removes when \
             it stops (--runtime-dir moves it)",
        ),
        entry(
            "/run/NetworkManager/conf.d/90-nm-unmanage-runtime.conf",
            "The runtime drop-in --runtime writes (gone at reboot; --remove --runtime \
             deletes it)",
        ),
        entry(
            "/run/systemd/network/10-nm-unmanage.network",
            "systemd-networkd's file ([Match] Name=PATTERNS, [Link] Unmanaged=yes), sorting \
             before 80-container-ve.network; written by every mode but --remove when networkd \
             runs, and left in place when a watcher stops (removing it gives the links back); \
             --networkd-dir moves it (/etc/systemd/network: across reboots), --remove deletes \
             it",
        ),
        entry(
            "/run/dbus/system_bus_socket",
            "The system bus, unless DBUS_SYSTEM_BUS_ADDRESS or --bus-address says otherwise",
        ),
    ],
    examples: &[
        entry(
            "nm-unmanage",
            "Managed=false on every ve-* and vb-* device now; prints those changed",
        ),
        entry(
            "nm-unmanage --watch",
            "Keep doing so for every new one, and after NetworkManager restarts",
        ),
        entry(
            "nm-unmanage --persist",
            "Write the drop-in and reload NetworkManager: it leaves them alone by itself",
        ),
        entry(
            "nm-unmanage --remove",
            "Take the drop-in and networkd's file away again; networkd then takes back \
             existing ve-* links and deletes ve-link's addresses on them",
        ),
        entry(
            "nm-unmanage --manager networkd --persist --networkd-dir /etc/systemd/network",
            "systemd-networkd only, for good: it leaves ve-*/vb-* links alone across reboots",
        ),
        entry(
            "nm-unmanage --if-running --runtime",
            "Before ve-link up: NetworkManager leaves new ve-*/vb-* veths alone until reboot; \
             exit 0 on a host without NetworkManager",
        ),
    ],
};
