#!/usr/bin/env bash
# setup-nfqueue.sh — install, remove or show the kernel side of inspector.
#
#   setup-nfqueue.sh install [--queue N] [--workers N] [--ports 25,22] [--whitelist CIDR]...
#                            [--try MINUTES] [--no-ssh-whitelist] [--mark BIT] [--maxelem N] [--no-ipv6]
#                            [--fail-closed] [--body-mark BIT]
#   setup-nfqueue.sh remove
#   setup-nfqueue.sh status
#   setup-nfqueue.sh confirm          # keep rules installed with --try
#
# install (idempotent) creates, for IPv4 (iptables) and IPv6 (ip6tables):
#   ipsets  inspector-ban4 / inspector-ban6 (hash:net: addresses, /64s, ranges) with timeouts
#           (an inspector-ban4 of type hash:ip from an older install is upgraded, its bans kept)
#           inspector-white4 / inspector-white6 (hash:net)                     whitelisted sources
#   chain   INSPECTOR, jumped to from the top of INPUT for TCP to the protected ports (not from lo):
#             banned source                     -> DROP   (the kernel enforces bans from then on)
#             whitelisted source                -> RETURN (never inspected, limited or banned)
#             conntrack INVALID (bad checksums)  -> DROP   (cannot desync the inspector's reassembly)
#             TCP NEW without SYN               -> DROP   (the seeds' "! --syn --state NEW")
#             packet marked decided by inspector -> save the mark on the connection, RETURN
#             connection marked decided          -> RETURN (nothing left to inspect: stays in the kernel)
#             SYN, or a segment with payload     -> NFQUEUE --queue-bypass (pure ACKs never leave the
#                                                   kernel; with --workers N, IPv4 is spread over queues
#                                                   N..N+workers-1 by address pair, IPv6 uses queue N so
#                                                   that a /64 is always counted by one worker)
# SMTP in-body filter (--body-mark BIT, default 0x20000000; 0 turns it off): inspector marks a
# connection "in body" at an accepted DATA; while so marked, only segments that could hold the
# end-of-data line ("\n." anywhere, or "." as first payload byte) are queued, the rest of the body
# stays in the kernel; inspector clears the mark after the end of data (both mark bits on a
# packet) and reads the next transaction's commands (see smtp_body_marks / smtp_body_filter).
# --fail-closed leaves out --queue-bypass: while no inspector is bound, the protected ports get
# no traffic at all (for hosts where unfiltered mail is worse than none).
# It never locks out the SSH session it runs from: that client's address is whitelisted
# unless --no-ssh-whitelist. With --try MINUTES everything is removed again after MINUTES
# unless "setup-nfqueue.sh confirm" is run (the seeds' 10-minute safety net).
# remove deletes exactly what install added and restores what it changed, so
# iptables-save and ip6tables-save print what they printed before.
set -euo pipefail

CHAIN=INSPECTOR
BAN4=inspector-ban4 BAN6=inspector-ban6 WHITE4=inspector-white4 WHITE6=inspector-white6
TAG=inspector-setup
QUEUE=0 WORKERS=$(nproc 2>/dev/null || echo 1) PORTS=25,22 BYPASS=--queue-bypass TRY="" SSH_WHITELIST=1 MARK=0x40000000 MAXELEM=1000000 IPV6=1
# "SYN, or TCP payload" as classic BPF (python -m inspector.bpf 4|6; tests/test_bpf.py keeps them in step)
BPF4="18,48 0 0 9,21 0 14 6,40 0 0 6,69 12 0 16383,177 0 0 0,80 0 0 13,69 9 0 2,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,2 0 0 0,40 0 0 2,97 0 0 0,28 0 0 0,21 1 0 0,6 0 0 1,6 0 0 0"
BPF6="13,48 0 0 6,21 0 9 6,48 0 0 53,69 7 0 2,48 0 0 52,84 0 0 240,116 0 0 2,7 0 0 0,40 0 0 4,28 0 0 0,21 1 0 0,6 0 0 1,6 0 0 0"
WHITELIST=()
BODY_MARK=0x20000000
# "the first payload byte is '.'" (python -m inspector.bpf 4|6 dot; tests/test_bpf.py keeps them in step)
DOT4="14,40 0 0 6,69 10 0 16383,177 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,7 0 0 0,40 0 0 2,45 0 3 0,80 0 0 0,21 0 1 46,6 0 0 1,6 0 0 0"
DOT6="14,48 0 0 6,21 0 10 6,48 0 0 52,84 0 0 240,116 0 0 2,4 0 0 40,7 0 0 0,40 0 0 4,4 0 0 40,45 0 3 0,80 0 0 0,21 0 1 46,6 0 0 1,6 0 0 0"

die() { echo "setup-nfqueue: error: $*" >&2; exit 1; }
say() { echo "setup-nfqueue: $*"; }

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

[ $# -ge 1 ] || usage
ACTION=$1; shift
while [ $# -gt 0 ]; do
    case $1 in
        --queue) QUEUE=${2:?}; shift ;;
        --ports) PORTS=${2:?}; shift ;;
        --whitelist) WHITELIST+=("${2:?}"); shift ;;
        --try) TRY=${2:?}; shift ;;
        --no-ssh-whitelist) SSH_WHITELIST=0 ;;
        --workers) WORKERS=${2:?}; shift ;;
        --mark) MARK=${2:?}; shift ;;
        --maxelem) MAXELEM=${2:?}; shift ;;
        --no-ipv6) IPV6=0 ;;
        --fail-closed) BYPASS="" ;;
        --body-mark) BODY_MARK=${2:?}; shift ;;
        -h|--help) usage ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[[ $QUEUE =~ ^[0-9]+$ ]] && [ "$QUEUE" -le 65535 ] || die "--queue must be 0..65535"
[[ $PORTS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--ports must be a comma-separated list of ports, e.g. 25,22"
[[ $WORKERS =~ ^[0-9]+$ ]] && [ "$WORKERS" -ge 1 ] && [ $((QUEUE + WORKERS - 1)) -le 65535 ] \
    || die "--workers must be at least 1 (queues --queue .. --queue+workers-1)"
[[ $MARK =~ ^0x[0-9a-fA-F]{1,8}$ ]] && [ $((MARK & (MARK - 1))) = 0 ] && [ $((MARK)) != 0 ] \
    || die "--mark must be a single bit in hex, e.g. 0x40000000"
[[ $MAXELEM =~ ^[0-9]+$ ]] || die "--maxelem must be a number"
[[ $BODY_MARK =~ ^(0|0x[0-9a-fA-F]{1,8})$ ]] && [ $((BODY_MARK & (BODY_MARK - 1))) = 0 ] && [ $((BODY_MARK)) != $((MARK)) ] \
    || die "--body-mark must be 0 or a single bit in hex other than --mark, e.g. 0x20000000"

families() { echo 4; [ "$IPV6" = 1 ] && echo 6; return 0; }
ipt() { if [ "$1" = 4 ]; then shift; iptables -w "$@"; else shift; ip6tables -w "$@"; fi; }
ipt_save() { if [ "$1" = 4 ]; then iptables-save; else ip6tables-save; fi; }
nft_family() { if [ "$1" = 4 ]; then echo ip; else echo ip6; fi; }
ban_set() { if [ "$1" = 4 ]; then echo $BAN4; else echo $BAN6; fi; }
white_set() { if [ "$1" = 4 ]; then echo $WHITE4; else echo $WHITE6; fi; }
bpf() { if [ "$1" = 4 ]; then echo "$BPF4"; else echo "$BPF6"; fi; }
queue_target() {
    if [ "$1" = 4 ] && [ "$WORKERS" -gt 1 ]; then
        echo "-j NFQUEUE --queue-balance $QUEUE:$((QUEUE + WORKERS - 1)) $BYPASS"
    else
        echo "-j NFQUEUE --queue-num $QUEUE $BYPASS"
    fi
}
netns_id() { stat -L -c %i /proc/self/ns/net; }
try_pidfile() { echo "/run/inspector/setup-try-$(netns_id).pid"; }

need_root() {
    [ "$(id -u)" = 0 ] || die "must run as root (it changes iptables rules and ipsets)"
    for tool in iptables ip6tables ipset nft; do
        command -v $tool >/dev/null || die "$tool not found (apt-get install iptables ipset nftables)"
    done
}

# Try every match and target the chain uses in a scratch chain; name what is missing.
probe_kernel() {
    local fam=$1 probe=INSPECTOR-PROBE out set
    set=$(ban_set "$fam")
    ipt "$fam" -N $probe 2>/dev/null || ipt "$fam" -F $probe
    local -a checks=(
        "ipset match (xt_set)|-m set --match-set $set src -j DROP"
        "conntrack match|-m conntrack --ctstate INVALID -j DROP"
        "connmark match|-m connmark --mark 0x1/0x1 -j RETURN"
        "mark match|-m mark --mark $MARK/$MARK -j RETURN"
        "CONNMARK target|-j CONNMARK --save-mark --nfmask $MARK --ctmask $MARK"
        "multiport match|-p tcp -m multiport --dports $PORTS -j RETURN"
        "comment match|-m comment --comment probe -j RETURN"
        "string match (xt_string)|-m string --algo bm --hex-string |0a2e| -j RETURN"
        "NFQUEUE target|$(queue_target "$fam")"
    )
    for check in "${checks[@]}"; do
        local name=${check%%|*} rule=${check#*|}
        # shellcheck disable=SC2086
        if ! out=$(ipt "$fam" -A $probe $rule 2>&1); then
            probe_failed "$fam" "$name" "$out"
        fi
    done
    if ! out=$(ipt "$fam" -A $probe -m bpf --bytecode "$(bpf "$fam")" -j RETURN 2>&1); then
        probe_failed "$fam" "bpf match (xt_bpf)" "$out"
    fi
    ipt "$fam" -F $probe
    ipt "$fam" -X $probe
}

probe_failed() {
    # undo what install did so far (the probe chain, a table it created, sets it created)
    local fam=$1 name=$2 out=$3 f
    for f in 4 6; do
        ipt "$f" -F INSPECTOR-PROBE 2>/dev/null && ipt "$f" -X INSPECTOR-PROBE 2>/dev/null
        if [ "${HAD_TABLE[$f]:-old}" = new ] && [ "$(ipt "$f" -S 2>/dev/null | grep -cv '^-P .* ACCEPT$')" = 0 ]; then
            nft delete table "$(nft_family "$f")" filter 2>/dev/null || true
        fi
        if [ "${HAD_SETS[$f]:-yes}" = no ]; then
            ipset destroy "$(ban_set "$f")" 2>/dev/null || true
            ipset destroy "$(white_set "$f")" 2>/dev/null || true
        fi
    done
    die "the kernel lacks the $name for IPv$fam (${out%%$'\n'*}); nothing was changed"
}

table_existed() { ipt_save "$1" | grep -q '^\*filter'; }

create_sets() {
    local fam=$1 family
    family=$([ "$fam" = 4 ] && echo inet || echo inet6)
    local bantype=hash:net
    [ "$fam" = 4 ] && upgrade_ban4
    ipset create -exist "$(ban_set "$fam")" $bantype family $family timeout 3600 maxelem "$MAXELEM" \
        || die "ipset $(ban_set "$fam") exists with other settings (remove it first)"
    ipset create -exist "$(white_set "$fam")" hash:net family $family maxelem 65536 \
        || die "ipset $(white_set "$fam") exists with other settings (remove it first)"
}

# An older install made inspector-ban4 hash:ip; bans now include networks (manual ranges, the
# fleet), so it becomes hash:net with its entries and timeouts.  The kernel neither swaps sets of
# different types nor renames or destroys one the chain still references: copy the bans into a
# temporary set, point the chain's ban rule at it, recreate the set and copy them back;
# install_family then rebuilds the chain on the new set and the temporary one is destroyed.
upgrade_ban4() {
    local tmp=$BAN4-up
    ipset list -t $BAN4 2>/dev/null | grep -q '^Type: hash:ip$' || return 0
    say "upgrading ipset $BAN4 from hash:ip to hash:net (its bans are kept)"
    ipset destroy $tmp 2>/dev/null || true
    ipset create $tmp hash:net family inet timeout 3600 maxelem "$MAXELEM"
    ipset save $BAN4 | sed -n "s/^add $BAN4 /add $tmp /p" | ipset restore -exist
    local n
    n=$(iptables -w -S $CHAIN 2>/dev/null | grep -v '^-N' | grep -n -- "--match-set $BAN4 src" | cut -d: -f1 | head -1)
    [ -n "$n" ] && iptables -w -R $CHAIN "$n" -m set --match-set $tmp src -j DROP
    ipset destroy $BAN4 || die "cannot upgrade ipset $BAN4: it is in use outside the $CHAIN chain"
    ipset create $BAN4 hash:net family inet timeout 3600 maxelem "$MAXELEM"
    ipset save $tmp | sed -n "s/^add $tmp /add $BAN4 /p" | ipset restore -exist
    [ -z "$n" ] && ipset destroy $tmp
    return 0
}

ssh_client() {
    # the address of the SSH client this script runs under, if any
    local c=${SSH_CONNECTION:-${SSH_CLIENT:-}}
    [ -n "$c" ] && echo "${c%% *}"
    return 0
}

install_family() {
    # $2: whether the filter table existed before install touched anything (old/new),
    # recorded in the jump rule's comment so that remove can give the host back as it was
    local fam=$1 had_table=$2
    if ipt "$fam" -S $CHAIN >/dev/null 2>&1; then
        # reinstall: keep the state recorded by the first install
        local recorded
        recorded=$(ipt_save "$fam" | sed -n "s/.*--comment \"\{0,1\}$TAG table=\([a-z]*\).*/\1/p" | head -1)
        if [ -n "$recorded" ]; then had_table=$recorded; fi
        remove_jumps "$fam"
        ipt "$fam" -F $CHAIN
    else
        ipt "$fam" -N $CHAIN
    fi
    local ban white
    ban=$(ban_set "$fam"); white=$(white_set "$fam")
    ipt "$fam" -A $CHAIN -m set --match-set "$ban" src -j DROP
    ipt "$fam" -A $CHAIN -m set --match-set "$white" src -j RETURN
    ipt "$fam" -A $CHAIN -m conntrack --ctstate INVALID -j DROP
    ipt "$fam" -A $CHAIN -p tcp ! --syn -m conntrack --ctstate NEW -j DROP
    smtp_body_marks "$fam"
    ipt "$fam" -A $CHAIN -m mark --mark "$MARK/$MARK" -j CONNMARK --save-mark --nfmask "$MARK" --ctmask "$MARK"
    ipt "$fam" -A $CHAIN -m mark --mark "$MARK/$MARK" -j RETURN
    ipt "$fam" -A $CHAIN -m connmark --mark "$MARK/$MARK" -j RETURN
    smtp_body_filter "$fam"
    # shellcheck disable=SC2046
    ipt "$fam" -A $CHAIN -m bpf --bytecode "$(bpf "$fam")" $(queue_target "$fam")
    ipt "$fam" -A $CHAIN -j RETURN
    ipt "$fam" -I INPUT 1 -p tcp -m multiport --dports "$PORTS" ! -i lo \
        -m comment --comment "$TAG table=$had_table" -j $CHAIN
}

# ---- SMTP in-body filter (issue 12, kind 5; owned by the smtp engine: keep these two together) ----
# packets inspector gives back with "repeat": body bit alone = the connection enters a DATA body;
# body and decided bits = it left it (clear the body bit on the connection)
smtp_body_marks() {
    local fam=$1 both
    [ $((BODY_MARK)) = 0 ] && return 0
    both=$(printf '0x%x' $((BODY_MARK | MARK)))
    ipt "$fam" -A $CHAIN -m mark --mark "$both/$both" -j CONNMARK --set-xmark "0x0/$BODY_MARK"
    ipt "$fam" -A $CHAIN -m mark --mark "$both/$both" -j RETURN
    ipt "$fam" -A $CHAIN -m mark --mark "$BODY_MARK/$BODY_MARK" -j CONNMARK --set-xmark "$BODY_MARK/$BODY_MARK"
    ipt "$fam" -A $CHAIN -m mark --mark "$BODY_MARK/$BODY_MARK" -j RETURN
}
# connections in a body: queue only what may hold the end-of-data line; the rest stays in the kernel
smtp_body_filter() {
    local fam=$1 dot
    [ $((BODY_MARK)) = 0 ] && return 0
    dot=$([ "$fam" = 4 ] && echo "$DOT4" || echo "$DOT6")
    # shellcheck disable=SC2046
    ipt "$fam" -A $CHAIN -m connmark --mark "$BODY_MARK/$BODY_MARK" -m string --algo bm \
        --hex-string '|0a2e|' $(queue_target "$fam")
    # shellcheck disable=SC2046
    ipt "$fam" -A $CHAIN -m connmark --mark "$BODY_MARK/$BODY_MARK" -m bpf --bytecode "$dot" $(queue_target "$fam")
    ipt "$fam" -A $CHAIN -m connmark --mark "$BODY_MARK/$BODY_MARK" -j RETURN
}

remove_jumps() {
    # delete every INPUT rule that jumps to our chain, whatever its ports
    local fam=$1 rule
    while rule=$(ipt "$fam" -S INPUT 2>/dev/null | grep -- "-j $CHAIN\$" | head -1) && [ -n "$rule" ]; do
        # shellcheck disable=SC2086
        eval "ipt $fam ${rule/-A INPUT/-D INPUT}"
    done
}

remove_family() {
    local fam=$1 recorded had_table=old
    recorded=$(ipt_save "$fam" 2>/dev/null | sed -n "s/.*--comment \"\{0,1\}$TAG table=\([a-z]*\).*/\1/p" | head -1)
    if [ -n "$recorded" ]; then had_table=$recorded; fi
    remove_jumps "$fam"
    if ipt "$fam" -S $CHAIN >/dev/null 2>&1; then
        ipt "$fam" -F $CHAIN
        ipt "$fam" -X $CHAIN
    fi
    if [ "$had_table" = new ] && [ "$(ipt "$fam" -S | grep -cv '^-P .* ACCEPT$')" = 0 ]; then
        nft delete table "$(nft_family "$fam")" filter 2>/dev/null || true
    fi
    for set in "$(ban_set "$fam")" "$(white_set "$fam")"; do
        ipset destroy "$set" 2>/dev/null || true
    done
}

cancel_try() {
    local pidfile pid
    pidfile=$(try_pidfile)
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
        rm -f "$pidfile"
        return 0
    fi
    return 1
}

do_install() {
    need_root
    declare -gA HAD_TABLE HAD_SETS
    for fam in $(families); do
        HAD_TABLE[$fam]=$(table_existed "$fam" && echo old || echo new)
        HAD_SETS[$fam]=$(ipset list -n "$(ban_set "$fam")" >/dev/null 2>&1 && echo yes || echo no)
    done
    for fam in $(families); do create_sets "$fam"; done
    for fam in $(families); do probe_kernel "$fam"; done
    for fam in $(families); do install_family "$fam" "${HAD_TABLE[$fam]}"; done
    ipset destroy "$BAN4-up" 2>/dev/null || true  # left by upgrade_ban4 until the chain moved off it
    local wl=("${WHITELIST[@]}")
    if [ "$SSH_WHITELIST" = 1 ]; then
        local me; me=$(ssh_client)
        if [ -n "$me" ]; then wl+=("$me"); say "whitelisting this SSH session's client $me"; fi
    fi
    for cidr in "${wl[@]}"; do
        if [[ $cidr == *:* ]]; then
            [ "$IPV6" = 1 ] && ipset add -exist $WHITE6 "$cidr"
        else
            ipset add -exist $WHITE4 "$cidr"
        fi || die "cannot whitelist $cidr"
    done
    say "installed: ports $PORTS -> NFQUEUE $QUEUE$([ "$WORKERS" -gt 1 ] && echo "..$((QUEUE + WORKERS - 1))") ($([ -n "$BYPASS" ] && echo "bypass" || echo "FAIL CLOSED: no traffic") when no inspector runs), bans in $BAN4/$BAN6"
    if [ -n "$TRY" ]; then
        local seconds pidfile
        seconds=$(awk -v m="$TRY" 'BEGIN { s = m * 60; if (s < 1) s = 1; printf "%d", s }')
        pidfile=$(try_pidfile)
        mkdir -p "$(dirname "$pidfile")"
        cancel_try || true
        # the timer removes its own pidfile first: remove must not cancel (kill) the timer running it
        setsid bash -c "sleep $seconds && rm -f '$pidfile' && '$0' remove >/dev/null 2>&1" </dev/null >/dev/null 2>&1 &
        echo $! > "$pidfile"
        say "trial: everything is removed again in $TRY minute(s) unless you run: $0 confirm"
    fi
}

do_remove() {
    need_root
    cancel_try || true
    for fam in 4 6; do remove_family "$fam"; done
    say "removed"
}

do_status() {
    for fam in $(families); do
        echo "== IPv$fam"
        if ipt "$fam" -S $CHAIN >/dev/null 2>&1; then
            ipt "$fam" -S INPUT | grep -- "-j $CHAIN" || echo "(no jump from INPUT!)"
            ipt "$fam" -L $CHAIN -v -n
        else
            echo "not installed"
        fi
        for set in "$(ban_set "$fam")" "$(white_set "$fam")"; do
            ipset list -t "$set" 2>/dev/null | grep -E '^(Name|Type|Header|Number of entries)' || true
        done
    done
    echo "== queues (queue portid waiting copy_mode copy_range queue_dropped user_dropped id_sequence)"
    cat /proc/net/netfilter/nfnetlink_queue 2>/dev/null || echo "(no queue bound)"
    [ -f "$(try_pidfile)" ] && echo "trial pending: run '$0 confirm' to keep the rules"
    return 0
}

case $ACTION in
    install) do_install ;;
    remove) do_remove ;;
    status) need_root; do_status ;;
    confirm) need_root; if cancel_try; then say "confirmed: rules stay"; else say "nothing to confirm"; fi ;;
    *) usage ;;
esac
