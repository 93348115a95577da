//! Random argument vectors for each binary, drawn from its flags, values that are bad for them,
//! and the scratch files of [`crate::world`]. Values are chosen per flag so that no vector asks
//! for something legitimately endless or huge (a billion benchmark pairs, a running daemon):
//! every run must end on its own.

use proptest::prelude::*;

use crate::harness::Bin;

/// A flag and the values drawn for it.
type Flag = (&'static str, &'static [&'static str]);

const FILES: &[&str] =
    &["{img}", "{trunc}", "{zeros}", "{random}", "{tiny}", "{dir}", "{mnt}", "{missing}", "/dev/null", "{empty}"];
const JUNK: &[&str] = &["-", "--", "x", "-1", "0", "18446744073709551616", "é", "{empty}", "--=", "-o=", "ro"];
const NUMBERS: &[&str] =
    &["0", "1", "-1", "7", "4294967295", "4294967296", "18446744073709551615", "1e3", "x", "{empty}"];

struct Grammar {
    /// Flags without a value.
    switches: &'static [&'static str],
    flags: &'static [Flag],
    /// Positional arguments, slot by slot (each slot usually filled): devices, mount points,
    /// subcommands and their operands.
    slots: &'static [&'static [&'static str]],
}

fn grammar(bin: Bin) -> Grammar {
    match bin {
        // No -f: a successful foreground mount would serve until unmounted.
        Bin::Mount => Grammar {
            switches: &["-n", "-v", "-s", "-h", "--help", "--version", "-x", "-o"],
            flags: &[(
                "-o",
                &[
                    "ro", "rw", "bogus", "lockproto=lock_dlm", "lockproto=lock_foo", "lockproto=", "locktable=nocolon",
                    "locktable=a:b", "locktable=:", "hostdata=jid=x", "hostdata=jid=0", "hostdata=jid=9",
                    "hostdata=", "errors=bogus", "errors=panic", "quota=on", "quota=off", "noatime", ",", "=",
                    "a=b=c", "ro,rw,ro", "{empty}",
                ],
            )],
            slots: &[FILES, FILES, FILES],
        },
        Bin::Mkfs => Grammar {
            switches: &["-K", "-O", "-q", "-h", "-V", "--bogus", "-O", "-O"],
            flags: &[
                ("-b", &["0", "512", "1000", "4096", "8192", "-4096", "x", "4294967296"]),
                ("-c", NUMBERS),
                ("-J", &["0", "1", "8", "1024", "4294967295", "-8", "x"]),
                ("-j", &["0", "1", "2", "100", "4294967295", "-1", "x"]),
                ("-p", &["lock_dlm", "lock_nolock", "lock_nolock", "lock_foo", "{empty}"]),
                ("-r", &["0", "31", "32", "2048", "2049", "4294967295", "x"]),
                ("-t", &["a:b", "nocolon", ":", "a:", ":b", "{empty}", "{longname}:x"]),
                ("-U", &["notauuid", "00000000-0000-0000-0000-000000000000", "{empty}"]),
            ],
            slots: &[
                &["{img}", "{zeros}", "{zeros}", "{trunc}", "{tiny}", "{dir}", "{missing}", "/dev/null", "{empty}"],
                &["0", "5", "-5", "1000000", "18446744073709551615", "x", "{empty}"],
            ],
        },
        Bin::Fsck => Grammar {
            switches: &["-n", "-y", "-p", "-a", "-f", "-v", "-q", "-h", "-V", "--bogus", "-n", "-y"],
            flags: &[],
            slots: &[FILES, FILES],
        },
        // Only configurations with which no daemon can start: missing, broken, or an address in use.
        Bin::Dlmd => Grammar {
            switches: &["--help", "--version", "--bogus"],
            flags: &[
                ("--config", &["{busyconf}", "{badconf}", "{nokeyconf}", "{missing}", "{random}", "{dir}", "{empty}"]),
                ("--node-id", &["0", "1", "2", "-1", "4294967296", "x", "{empty}"]),
                ("--threads", &["0", "1", "2", "-1", "x", "{empty}"]),
            ],
            slots: &[&["x", "{empty}"]],
        },
        // Addresses where no daemon answers at once; benchmark sizes that end quickly.
        Bin::Dlm => Grammar {
            switches: &["--help", "--version", "--bogus", "--noqueue"],
            flags: &[
                ("--config", &["{missing}", "{badconf}", "{random}", "{dir}", "{empty}"]),
                ("--node-id", &["0", "1", "-1", "x"]),
                ("--address", &["{refused}", "unix:{missing}", "nowhere", "{empty}", "unix:", "[::1", "127.0.0.1:0"]),
                ("--key-file", &["{key}", "{tiny}", "{missing}", "{dir}", "{empty}"]),
                ("--transport", &["framed", "grpc", "pigeon"]),
                ("--poll-us", &["0", "1000001", "-1", "18446744073709551615"]),
                ("--hold-ms", &["0", "-1", "x"]),
                ("--flags", &["NOQUEUE", "BOGUS", "NOQUEUE|VALBLK", "|", "{empty}"]),
                ("--lvb-len", &["0", "7", "32", "4294967296"]),
                ("--pairs", &["0", "1", "100", "-1", "x"]),
                ("--inflight", &["0", "1", "5000", "-1"]),
                ("--master", &["local", "remote", "any", "nowhere"]),
                ("--mode", &["EX", "XX", "{empty}"]),
                ("--warmup", &["0", "1", "-1"]),
                ("--resources", &["0", "1", "-1", "x", "18446744073709551615"]),
            ],
            slots: &[
                &["status", "ls", "lockdump", "lock", "lock", "bench", "bench", "engine-bench", "engine-bench", "x"],
                &["ls", "ls", "{longname}", "{empty}"],
                &["res", "{longname}", "{empty}"],
                &["EX", "PR", "XX", "{empty}"],
            ],
        },
    }
}

fn pick(list: &'static [&'static str]) -> BoxedStrategy<Vec<String>> {
    proptest::sample::select(list).prop_map(|s| vec![s.to_string()]).boxed()
}

/// Argument vectors for `bin`: the first positional argument, up to 5 options (a switch, a flag with
/// one of its values, or junk), then the other positional arguments; any slot may be left empty.
pub fn argv(bin: Bin) -> BoxedStrategy<Vec<String>> {
    let g = grammar(bin);
    let mut items: Vec<(u32, BoxedStrategy<Vec<String>>)> = vec![(2, pick(g.switches)), (1, pick(JUNK))];
    if !g.flags.is_empty() {
        let flag = proptest::sample::select(g.flags)
            .prop_flat_map(|(flag, values)| {
                proptest::sample::select(values).prop_map(move |v| vec![flag.to_string(), v.to_string()])
            })
            .boxed();
        items.push((5, flag));
    }
    let options = proptest::collection::vec(proptest::strategy::Union::new_weighted(items), 0..5);
    let slots: Vec<_> =
        g.slots.iter().map(|&slot| proptest::option::weighted(0.85, proptest::sample::select(slot))).collect();
    (options, slots)
        .prop_map(|(options, slots)| {
            let mut slots = slots.into_iter().flatten().map(str::to_string);
            let mut argv: Vec<String> = slots.next().into_iter().collect();
            argv.extend(options.concat());
            argv.extend(slots);
            argv
        })
        .boxed()
}

/// Whether a run that ended with `code` may have changed the files it was given.
pub fn may_write(bin: Bin, argv: &[String], code: Option<i32>) -> bool {
    let code = code.unwrap_or(-1);
    match bin {
        // Formatting or mounting (which replays and writes the journal) succeeded.
        Bin::Mkfs | Bin::Mount => code == 0,
        // Repairs, unless told -n; only what was fixed (1) or partly fixed (4).
        Bin::Fsck => !argv.iter().any(|a| a == "-n") && (code == 1 || code == 4),
        Bin::Dlmd | Bin::Dlm => false,
    }
}

/// Files a run of `bin` must never change, whatever it was asked: they hold no GFS2 filesystem
/// (fsck) or are too small for one (mkfs, mount).
pub fn never_written(bin: Bin) -> &'static [&'static str] {
    match bin {
        Bin::Fsck => &["random", "tiny", "trunc", "zeros"],
        _ => &["random", "tiny", "trunc"],
    }
}
