#!/usr/bin/env bash
# setup-nfqueue.sh — install, remove or show the kernel side of inspector.
#
#   setup-nfqueue.sh install [--queue N] [--workers N] [--ports 25,22] [--whitelist CIDR]...
#                            [--try MINUTES] [--no-ssh-whitelist] [--mark BIT] [--maxelem N] [--no-ipv6]
#                            [--fail-closed] [--chain INPUT|FORWARD|DOCKER-USER[,...] | --forward]
#                            [--body-mark BIT] [--reply-mark BIT] [--syn-limit N]
#   setup-nfqueue.sh remove
#   setup-nfqueue.sh status
#   setup-nfqueue.sh confirm          # keep rules installed with --try
#   setup-nfqueue.sh baseline --open 25,465,587,993,995,22 [--try MINUTES] [--whitelist CIDR]...
#                             [--no-ssh-whitelist] [--no-ipv6]
#   setup-nfqueue.sh remove-baseline  # give INPUT back exactly as it was before "baseline"
#
# install (idempotent) creates, for IPv4 (iptables) and IPv6 (ip6tables):
#   ipsets  inspector-ban4 / inspector-ban6 (hash:net: addresses, /64s, ranges) with timeouts
#           (an inspector-ban4 of type hash:ip from an older install is upgraded, its bans kept)
#           inspector-white4 / inspector-white6 (hash:net)                     whitelisted sources
#   chain   INSPECTOR, jumped to from the top of INPUT for TCP to the protected ports (not from lo):
#             whitelisted source                -> RETURN (never inspected, limited or banned, even
#                                                   by a ban that covers it: no lockout)
#             banned source                     -> DROP   (the kernel enforces bans from then on)
#             conntrack INVALID (bad checksums)  -> DROP   (cannot desync the inspector's reassembly)
#             TCP NEW without SYN               -> DROP   (the seeds' "! --syn --state NEW")
#             packet marked decided by inspector -> save the mark on the connection, RETURN
#             connection marked decided          -> RETURN (nothing left to inspect: stays in the kernel)
#             SYN (at most --syn-limit per s)    -> NFQUEUE (only the ISN is read: the stream starts there)
#             connection not ASSURED             -> RETURN (handshake not complete: nothing is proven, so
#                                                   nothing may count, decide or ban; Linux delivers no data)
#             payload, FIN or RST                -> NFQUEUE --queue-bypass (pure ACKs never leave the
#                                                   kernel; with --workers N, IPv4 is spread over queues
#                                                   N..N+workers-1 by address pair, IPv6 uses queue N so
#                                                   that a /64 is always counted by one worker)
# --chain FORWARD (--forward) or DOCKER-USER (Docker's chain for admin rules) protects an MTA in a
# container behind Docker's NAT: its packets traverse FORWARD, not INPUT.  Only connections that were
# DNAT'ed to a published port jump (--ctstate DNAT, original direction), so the containers' own
# outgoing mail and the servers' replies are not inspected; --ports then names the container's ports.
# --chain INPUT,DOCKER-USER protects a local MTA and a containerised one at once.
# SMTP in-body filter (--body-mark BIT, default 0x20000000; 0 turns it off): inspector marks a
# connection "in body" at an accepted DATA; while so marked, only segments that could hold the
# end-of-data line ("\n." anywhere, or "." as first payload byte) are queued, the rest of the body
# stays in the kernel; inspector clears the mark after the end of data (both mark bits on a
# packet) and reads the next transaction's commands (see smtp_body_marks / smtp_body_filter).
# SMTP replies (--reply-mark BIT, default 0x10000000; 0 turns it off): while inspector keeps this
# mark on a connection (from its first RCPT on, outside bodies), the SERVER's payload segments of
# it are queued too (chain INSPECTOR-REPLY, jumped to from OUTPUT for TCP from the protected ports,
# and with --chain FORWARD/DOCKER-USER from that chain for DNAT'ed connections in the reply
# direction): a DATA starts a body only at the server's own 354, so a DATA refused after a
# recipient refused for policy is never taken for a body.  That chain never drops: it only queues,
# always with --queue-bypass, and pure ACKs never leave the kernel.
# --fail-closed leaves out --queue-bypass: while no inspector is bound, the protected ports get
# no traffic at all (for hosts where unfiltered mail is worse than none).
# It never locks out the SSH session it runs from: that client's address is whitelisted
# unless --no-ssh-whitelist. With --try MINUTES everything is removed again after MINUTES
# unless "setup-nfqueue.sh confirm" is run (the seeds' 10-minute safety net).
# baseline (the seeds' "iptables basics") adds chain INSPECTOR-BASE, jumped to from INPUT right after
# the INSPECTOR jump: loopback accepted, conntrack INVALID and NULL/XMAS scans dropped, ESTABLISHED and
# RELATED accepted, ICMP echo (IPv4) and ICMPv6 (neighbour discovery) accepted, the whitelist and this
# SSH session's client accepted, new TCP connections to the --open ports accepted; INPUT's policy
# becomes DROP.  The previous policy is recorded in the jump's comment for remove-baseline.
# remove deletes exactly what install added and restores what it changed, so
# iptables-save and ip6tables-save print what they printed before.
set -euo pipefail

CHAIN=INSPECTOR
REPLY_CHAIN=INSPECTOR-REPLY  # the server's side of SMTP connections (--reply-mark)
BAN4=inspector-ban4 BAN6=inspector-ban6 WHITE4=inspector-white4 WHITE6=inspector-white6
TAG=inspector-setup
QUEUE=0 WORKERS=$(nproc 2>/dev/null || echo 1) PORTS=25,22 BYPASS=--queue-bypass TRY="" SSH_WHITELIST=1 MARK=0x40000000 MAXELEM=1000000 IPV6=1
SYN_LIMIT=10000  # SYNs/s (per family) that reach NFQUEUE; beyond it a flood passes SYNs unqueued (see the tcp block)
# "SYN, FIN, RST or TCP payload" as classic BPF (python -m inspector.bpf 4|6; tests/test_bpf.py keeps them in step)
BPF4="18,48 0 0 9,21 0 14 6,40 0 0 6,69 12 0 16383,177 0 0 0,80 0 0 13,69 9 0 7,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,2 0 0 0,40 0 0 2,97 0 0 0,28 0 0 0,21 1 0 0,6 0 0 1,6 0 0 0"
BPF6="13,48 0 0 6,21 0 9 6,48 0 0 53,69 7 0 7,48 0 0 52,84 0 0 240,116 0 0 2,7 0 0 0,40 0 0 4,28 0 0 0,21 1 0 0,6 0 0 1,6 0 0 0"
WHITELIST=()
JUMP_FROM=INPUT
BASE=INSPECTOR-BASE BASE_TAG=inspector-baseline OPEN=""
BODY_MARK=0x20000000
REPLY_MARK=0x10000000
# "the first payload byte is '.'" (python -m inspector.bpf 4|6 dot; tests/test_bpf.py keeps them in step)
DOT4="14,40 0 0 6,69 10 0 16383,177 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,7 0 0 0,40 0 0 2,45 0 3 0,80 0 0 0,21 0 1 46,6 0 0 1,6 0 0 0"
DOT6="14,48 0 0 6,21 0 10 6,48 0 0 52,84 0 0 240,116 0 0 2,4 0 0 40,7 0 0 0,40 0 0 4,4 0 0 40,45 0 3 0,80 0 0 0,21 0 1 46,6 0 0 1,6 0 0 0"

die() { echo "setup-nfqueue: error: $*" >&2; exit 1; }
say() { echo "setup-nfqueue: $*"; }

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

[ $# -ge 1 ] || usage
ACTION=$1; shift
while [ $# -gt 0 ]; do
    case $1 in
        --queue) QUEUE=${2:?}; shift ;;
        --ports) PORTS=${2:?}; shift ;;
        --whitelist) WHITELIST+=("${2:?}"); shift ;;
        --try) TRY=${2:?}; shift ;;
        --no-ssh-whitelist) SSH_WHITELIST=0 ;;
        --workers) WORKERS=${2:?}; WORKERS_GIVEN=1; shift ;;
        --mark) MARK=${2:?}; shift ;;
        --maxelem) MAXELEM=${2:?}; shift ;;
        --syn-limit) SYN_LIMIT=${2:?}; shift ;;
        --no-ipv6) IPV6=0 ;;
        --fail-closed) BYPASS="" ;;
        --chain) JUMP_FROM=${2:?}; shift ;;
        --forward) JUMP_FROM=FORWARD ;;
        --open) OPEN=${2:?}; shift ;;
        --body-mark) BODY_MARK=${2:?}; shift ;;
        --reply-mark) REPLY_MARK=${2:?}; shift ;;
        -h|--help) usage ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
# default workers: one per two CPUs, at least one (README "Line rate on this machine": on 2 CPUs
# shared with the MTA one worker costs less per mail and passes more than two)
[ -n "${WORKERS_GIVEN:-}" ] || WORKERS=$(( $(nproc 2>/dev/null || echo 2) / 2 )); [ "$WORKERS" -ge 1 ] || WORKERS=1
[[ $QUEUE =~ ^[0-9]+$ ]] && [ "$QUEUE" -le 65535 ] || die "--queue must be 0..65535"
[[ $PORTS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--ports must be a comma-separated list of ports, e.g. 25,22"
[[ $WORKERS =~ ^[0-9]+$ ]] && [ "$WORKERS" -ge 1 ] && [ $((QUEUE + WORKERS - 1)) -le 65535 ] \
    || die "--workers must be at least 1 (queues --queue .. --queue+workers-1)"
[[ $MARK =~ ^0x[0-9a-fA-F]{1,8}$ ]] && [ $((MARK & (MARK - 1))) = 0 ] && [ $((MARK)) != 0 ] \
    || die "--mark must be a single bit in hex, e.g. 0x40000000"
[[ $MAXELEM =~ ^[0-9]+$ ]] || die "--maxelem must be a number"
[[ $BODY_MARK =~ ^(0|0x[0-9a-fA-F]{1,8})$ ]] && [ $((BODY_MARK & (BODY_MARK - 1))) = 0 ] && [ $((BODY_MARK)) != $((MARK)) ] \
    || die "--body-mark must be 0 or a single bit in hex other than --mark, e.g. 0x20000000"
[[ $REPLY_MARK =~ ^(0|0x[0-9a-fA-F]{1,8})$ ]] && [ $((REPLY_MARK & (REPLY_MARK - 1))) = 0 ] \
    && { [ $((REPLY_MARK)) = 0 ] || { [ $((REPLY_MARK)) != $((MARK)) ] && [ $((REPLY_MARK)) != $((BODY_MARK)) ]; }; } \
    || die "--reply-mark must be 0 or a single bit in hex other than --mark and --body-mark, e.g. 0x10000000"
[[ $SYN_LIMIT =~ ^[0-9]+$ ]] && [ "$SYN_LIMIT" -le 10000 ] \
    || die "--syn-limit must be 0 (no limit) .. 10000 SYNs per second (the kernel's limit match allows no more)"

families() { echo 4; [ "$IPV6" = 1 ] && echo 6; return 0; }
ipt() { if [ "$1" = 4 ]; then shift; iptables -w "$@"; else shift; ip6tables -w "$@"; fi; }
ipt_save() { if [ "$1" = 4 ]; then iptables-save; else ip6tables-save; fi; }
nft_family() { if [ "$1" = 4 ]; then echo ip; else echo ip6; fi; }
ban_set() { if [ "$1" = 4 ]; then echo $BAN4; else echo $BAN6; fi; }
white_set() { if [ "$1" = 4 ]; then echo $WHITE4; else echo $WHITE6; fi; }
bpf() { if [ "$1" = 4 ]; then echo "$BPF4"; else echo "$BPF6"; fi; }
queue_target() {
    # $2: the bypass flag to use (the reply chain always passes --queue-bypass)
    local bypass=${2-$BYPASS}
    if [ "$1" = 4 ] && [ "$WORKERS" -gt 1 ]; then
        # --queue-balance hashes the address pair symmetrically (include/net/netfilter/nf_queue.h,
        # hash_v4/hash_v6: "packets in either direction go into same queue"), so a connection's
        # server packets (INSPECTOR-REPLY) reach the worker that reads its client packets
        echo "-j NFQUEUE --queue-balance $QUEUE:$((QUEUE + WORKERS - 1)) $bypass"
    else
        echo "-j NFQUEUE --queue-num $QUEUE $bypass"
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
        "conntrack status match|-m conntrack ! --ctstatus ASSURED -j RETURN"
        "limit match|-m limit --limit 10000/second --limit-burst 10000 -j RETURN"
        "connmark match|-m connmark --mark 0x1/0x1 -j RETURN"
        "mark match|-m mark --mark $MARK/$MARK -j RETURN"
        "CONNMARK target|-j CONNMARK --save-mark --nfmask $MARK --ctmask $MARK"
        "CONNMARK set-xmark target|-j CONNMARK --set-xmark $MARK/$MARK"
        "conntrack direction match|-m conntrack --ctdir REPLY -j RETURN"
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
    # the address of the SSH client this script runs under, if any: from the environment, or, where
    # sudo (env_reset) or su - dropped it, from this terminal's login record (who -m: "... (ADDRESS)")
    local c=${SSH_CONNECTION:-${SSH_CLIENT:-}}
    if [ -n "$c" ]; then echo "${c%% *}"; return 0; fi
    c=$(who -m 2>/dev/null | sed -n 's/.*(\([^()]*\))[[:space:]]*$/\1/p' | head -1)
    if [[ $c =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || [[ $c =~ ^[0-9A-Fa-f]*:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*$ ]]; then
        echo "$c"
    fi
    return 0
}
# say so when the SSH whitelist finds nobody: an admin behind sudo would otherwise learn it from a ban
no_ssh_client() {
    say "warning: no SSH client found to whitelist (not an SSH session, or its address was not kept):" \
        "if you manage this host over SSH, pass --whitelist YOUR_ADDRESS"
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
    # the whitelist first: a ban the service could not refuse (it knows [whitelist], not these sets:
    # the SSH client whitelisted here, --whitelist) never locks out a whitelisted source
    ipt "$fam" -A $CHAIN -m set --match-set "$white" src -j RETURN
    ipt "$fam" -A $CHAIN -m set --match-set "$ban" src -j DROP
    ipt "$fam" -A $CHAIN -m conntrack --ctstate INVALID -j DROP
    ipt "$fam" -A $CHAIN -p tcp ! --syn -m conntrack --ctstate NEW -j DROP
    smtp_body_marks "$fam"
    decided_marks "$fam" $CHAIN
    smtp_body_filter "$fam"
    # >>> tcp: which packets reach NFQUEUE (README "TCP: what the engine reads, and proven connections")
    # A SYN proves nothing, but it is the only packet whose sequence number Linux takes as the
    # stream's start (rcv_isn); the engine keeps it apart and never counts or bans on it.
    # Everything else is queued only once conntrack has seen the handshake complete (ASSURED:
    # the client acknowledged the server's SYN-ACK), so rates and bans count proven connections.
    # A SYN flood must not fill the queue: past --syn-limit SYNs/s, SYNs pass unqueued (their
    # connections are then picked up midstream: still inspected, never bypassed early, never
    # counted), so the queue keeps room for the data it must see.
    local synlimit=()
    [ "$SYN_LIMIT" -gt 0 ] && synlimit=(-m limit --limit "$SYN_LIMIT/second" --limit-burst "$SYN_LIMIT")
    # shellcheck disable=SC2046
    ipt "$fam" -A $CHAIN -p tcp --syn "${synlimit[@]}" $(queue_target "$fam")
    ipt "$fam" -A $CHAIN -m conntrack ! --ctstatus ASSURED -j RETURN
    # shellcheck disable=SC2046
    ipt "$fam" -A $CHAIN -m bpf --bytecode "$(bpf "$fam")" $(queue_target "$fam")
    # <<< tcp
    ipt "$fam" -A $CHAIN -j RETURN
    add_jump "$fam" "$had_table"
    install_reply_family "$fam"
}

# The jump into INSPECTOR, first in INPUT (TCP to the protected ports, not from lo) or, with --chain,
# first in FORWARD or a chain FORWARD calls (DOCKER-USER): there only for connections DNAT'ed to a
# published port, in their original direction (client to server).  --chain INPUT,DOCKER-USER: both.
add_jump() {
    local fam=$1 had_table=$2 rec
    # the baseline came first: its record of the table is the older truth
    rec=$(baseline_recorded "$fam"); if [ -n "$rec" ]; then had_table=${rec#* }; fi
    jump_to "$fam" $CHAIN client "$TAG table=$had_table"
}

# jump_to FAM CHAIN client|server COMMENT: the jumps into CHAIN from every chain of --chain.  client:
# from INPUT, TCP to the protected ports not from lo, or from FORWARD/DOCKER-USER, DNAT'ed connections
# in their original direction; server: the same connections' other direction (from OUTPUT, TCP from
# the protected ports not to lo; from FORWARD/DOCKER-USER in the reply direction, right after the
# client jump).
jump_to() {
    local fam=$1 chain=$2 comment=$4 from ports=--dports lo=-i dir=ORIGINAL at=1 local_chain=INPUT
    if [ "$3" = server ]; then ports=--sports lo=-o dir=REPLY at=2 local_chain=OUTPUT; fi
    for from in ${JUMP_FROM//,/ }; do
        if [ "$from" = INPUT ]; then
            ipt "$fam" -I $local_chain 1 -p tcp -m multiport $ports "$PORTS" ! $lo lo \
                -m comment --comment "$comment" -j "$chain"
        else
            ipt "$fam" -I "$from" $at -p tcp -m multiport $ports "$PORTS" -m conntrack --ctstate DNAT \
                --ctdir $dir -m comment --comment "$comment" -j "$chain"
        fi
    done
}

# Before anything changes: every chain to jump from must exist in every family.
check_jump_chain() {
    local fam from
    [[ $JUMP_FROM =~ ^[A-Za-z0-9_-]{1,28}(,[A-Za-z0-9_-]{1,28})*$ ]] \
        || die "--chain must be chain names, e.g. DOCKER-USER or INPUT,DOCKER-USER"
    for from in ${JUMP_FROM//,/ }; do
        [ "$from" = INPUT ] && continue
        [ "$from" = "$CHAIN" ] && die "--chain cannot be $CHAIN itself"
        for fam in $(families); do
            ipt "$fam" -S "$from" >/dev/null 2>&1 || die "no chain $from in $([ "$fam" = 4 ] && echo iptables \
                || echo ip6tables) (is Docker running? Docker without IPv6 has no ip6tables chains: add --no-ipv6)"
        done
    done
}

# ---- SMTP in-body filter (issue 12, kind 5; owned by the smtp engine: keep these together) ----
# packets inspector gives back with "repeat" name the connection's whole SMTP state (one of three):
# body bit alone = in a DATA body; reply bit alone = the server's replies are queued; the decided bit
# with the body and reply bits = neither.  Each sets its bit and clears the other on the connection.
# $2: the chain (INSPECTOR, and INSPECTOR-REPLY: a 354 moves a connection into its body on the
# server's packet)
smtp_body_marks() {
    local fam=$1 chain=${2:-$CHAIN} state clear
    state=$(printf '0x%x' $((BODY_MARK | REPLY_MARK)))
    [ $((state)) = 0 ] && return 0
    local bit
    # "neither" first: the decided bit with either state bit (so that a service configured with one
    # of them off still clears the connection's state, never sets it)
    for bit in $BODY_MARK $REPLY_MARK; do
        [ $((bit)) = 0 ] && continue
        clear=$(printf '0x%x' $((bit | MARK)))
        ipt "$fam" -A "$chain" -m mark --mark "$clear/$clear" -j CONNMARK --set-xmark "0x0/$state"
        ipt "$fam" -A "$chain" -m mark --mark "$clear/$clear" -j RETURN
    done
    for bit in $BODY_MARK $REPLY_MARK; do
        [ $((bit)) = 0 ] && continue
        ipt "$fam" -A "$chain" -m mark --mark "$bit/$bit" -j CONNMARK --set-xmark "$bit/$state"
        ipt "$fam" -A "$chain" -m mark --mark "$bit/$bit" -j RETURN
    done
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

# The server's side (--reply-mark): connections inspector marked "replies" have their server payload
# segments queued, to the same queue(s) as the client side.  Never a drop here, always --queue-bypass.
install_reply_family() {
    local fam=$1
    if ipt "$fam" -S $REPLY_CHAIN >/dev/null 2>&1; then
        ipt "$fam" -F $REPLY_CHAIN
    else
        ipt "$fam" -N $REPLY_CHAIN
    fi
    [ $((REPLY_MARK)) = 0 ] && { ipt "$fam" -X $REPLY_CHAIN; return 0; }
    smtp_body_marks "$fam" $REPLY_CHAIN
    decided_marks "$fam" $REPLY_CHAIN
    # shellcheck disable=SC2046
    ipt "$fam" -A $REPLY_CHAIN -m connmark --mark "$REPLY_MARK/$REPLY_MARK" -m bpf --bytecode "$(bpf "$fam")" \
        $(queue_target "$fam" --queue-bypass)
    ipt "$fam" -A $REPLY_CHAIN -j RETURN
    jump_to "$fam" $REPLY_CHAIN server "$TAG reply"
}

# A packet inspector gave back with the decided bit marks its connection decided (bypassed); a
# decided connection's packets leave the chain unqueued.
decided_marks() {
    local fam=$1 chain=$2
    ipt "$fam" -A "$chain" -m mark --mark "$MARK/$MARK" -j CONNMARK --save-mark --nfmask "$MARK" --ctmask "$MARK"
    ipt "$fam" -A "$chain" -m mark --mark "$MARK/$MARK" -j RETURN
    ipt "$fam" -A "$chain" -m connmark --mark "$MARK/$MARK" -j RETURN
}

remove_jumps() {
    # delete every rule that jumps to our chains, whatever its chain (INPUT, OUTPUT, FORWARD, DOCKER-USER) and ports
    local fam=$1 rule chain
    for chain in $CHAIN $REPLY_CHAIN; do
        while rule=$(ipt "$fam" -S 2>/dev/null | grep -- "^-A .* -j $chain\$" | head -1) && [ -n "$rule" ]; do
            # shellcheck disable=SC2086
            eval "ipt $fam ${rule/-A /-D }"
        done
    done
}

remove_family() {
    local fam=$1 recorded had_table=old
    recorded=$(ipt_save "$fam" 2>/dev/null | sed -n "s/.*--comment \"\{0,1\}$TAG table=\([a-z]*\).*/\1/p" | head -1)
    if [ -n "$recorded" ]; then had_table=$recorded; fi
    remove_jumps "$fam"
    local chain
    for chain in $CHAIN $REPLY_CHAIN; do
        if ipt "$fam" -S $chain >/dev/null 2>&1; then
            ipt "$fam" -F $chain
            ipt "$fam" -X $chain
        fi
    done
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
    check_jump_chain
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
        if [ -n "$me" ]; then wl+=("$me"); say "whitelisting this SSH session's client $me"; else no_ssh_client; fi
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
            ipt "$fam" -S | grep -- "^-A .* -j $CHAIN\$" || echo "(no jump into $CHAIN!)"
            ipt "$fam" -L $CHAIN -v -n
            if ipt "$fam" -S $REPLY_CHAIN >/dev/null 2>&1; then
                ipt "$fam" -S | grep -- "^-A .* -j $REPLY_CHAIN\$" || echo "(no jump into $REPLY_CHAIN!)"
                ipt "$fam" -L $REPLY_CHAIN -v -n
            fi
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
    baseline_status
    return 0
}

baseline_status() {
    local fam
    for fam in $(families); do
        if ipt "$fam" -S $BASE >/dev/null 2>&1; then
            echo "== baseline IPv$fam: INPUT policy $(ipt "$fam" -S INPUT | sed -n 's/^-P INPUT //p'), open: $(ipt "$fam" -S $BASE \
                | sed -n 's/.*--dports \([0-9,]*\) .*/\1/p' | head -1)"
        fi
    done
    [ -f "$(baseline_try_pidfile)" ] && echo "baseline trial pending: run '$0 confirm' to keep it"
    return 0
}

# ---- baseline: a default-DROP INPUT with the listed ports open ---------------------------------------

baseline_try_pidfile() { echo "/run/inspector/setup-baseline-try-$(netns_id).pid"; }

cancel_timer() {
    local pidfile=$1 pid
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile")
        kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
        rm -f "$pidfile"
        return 0
    fi
    return 1
}

remove_base_jumps() {
    local fam=$1 rule
    while rule=$(ipt "$fam" -S INPUT 2>/dev/null | grep -- "^-A INPUT .* -j $BASE\$" | head -1) && [ -n "$rule" ]; do
        # shellcheck disable=SC2086
        eval "ipt $fam ${rule/-A /-D }"
    done
}

# "POLICY TABLE" recorded by the first baseline run in this family, or nothing
baseline_recorded() {
    ipt_save "$1" 2>/dev/null | sed -n "s/.*--comment \"\{0,1\}$BASE_TAG policy=\([A-Z]*\) table=\([a-z]*\).*/\1 \2/p" | head -1
}

baseline_family() {
    local fam=$1 had_table=$2 policy rec pos cidr
    policy=$(ipt "$fam" -S INPUT | sed -n 's/^-P INPUT \([A-Z]*\).*/\1/p')
    if ipt "$fam" -S $BASE >/dev/null 2>&1; then
        rec=$(baseline_recorded "$fam")
        if [ -n "$rec" ]; then policy=${rec% *}; had_table=${rec#* }; fi
        remove_base_jumps "$fam"
        ipt "$fam" -F $BASE
    else
        ipt "$fam" -N $BASE
        # install came first: its record of the table is the older truth
        rec=$(ipt_save "$fam" | sed -n "s/.*--comment \"\{0,1\}$TAG table=\([a-z]*\).*/\1/p" | head -1)
        if [ -n "$rec" ]; then had_table=$rec; fi
    fi
    ipt "$fam" -A $BASE -i lo -j ACCEPT
    # the scans by name first (conntrack would call them INVALID too, but the counters tell them apart)
    ipt "$fam" -A $BASE -p tcp --tcp-flags ALL NONE -j DROP
    ipt "$fam" -A $BASE -p tcp --tcp-flags ALL ALL -j DROP
    ipt "$fam" -A $BASE -p tcp --tcp-flags ALL FIN,PSH,URG -j DROP
    ipt "$fam" -A $BASE -m conntrack --ctstate INVALID -j DROP
    ipt "$fam" -A $BASE -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
    if [ "$fam" = 4 ]; then
        ipt 4 -A $BASE -p icmp --icmp-type echo-request -j ACCEPT
    else
        ipt 6 -A $BASE -p ipv6-icmp -j ACCEPT   # neighbour discovery, PMTU, echo (RFC 4890)
    fi
    for cidr in "${BASE_WHITELIST[@]}"; do
        if [[ $cidr == *:* ]]; then [ "$fam" = 6 ] || continue; else [ "$fam" = 4 ] || continue; fi
        ipt "$fam" -A $BASE -s "$cidr" -j ACCEPT || die "cannot whitelist $cidr"
    done
    ipt "$fam" -A $BASE -p tcp -m multiport --dports "$OPEN" -m conntrack --ctstate NEW -j ACCEPT
    ipt "$fam" -A $BASE -j RETURN
    # right after the INSPECTOR jump(s): inspection comes first, ESTABLISHED must not skip it
    pos=$(ipt "$fam" -S INPUT | grep '^-A INPUT' | grep -n -- "-j $CHAIN\$" | tail -1 | cut -d: -f1 || true)
    ipt "$fam" -I INPUT $((${pos:-0} + 1)) -m comment --comment "$BASE_TAG policy=$policy table=$had_table" -j $BASE
    ipt "$fam" -P INPUT DROP
}

remove_baseline_family() {
    local fam=$1 rec policy=ACCEPT had_table=old
    rec=$(baseline_recorded "$fam")
    if [ -n "$rec" ]; then policy=${rec% *}; had_table=${rec#* }; fi
    if ipt "$fam" -S $BASE >/dev/null 2>&1; then
        ipt "$fam" -P INPUT "$policy"   # first: never a moment of DROP without the ESTABLISHED accept
        remove_base_jumps "$fam"
        ipt "$fam" -F $BASE
        ipt "$fam" -X $BASE
    fi
    if [ "$had_table" = new ] && [ "$(ipt "$fam" -S | grep -cv '^-P .* ACCEPT$')" = 0 ]; then
        nft delete table "$(nft_family "$fam")" filter 2>/dev/null || true
    fi
}

do_baseline() {
    need_root
    [ -n "$OPEN" ] || die "baseline needs --open PORTS, e.g. --open 25,465,587,993,995,22"
    [[ $OPEN =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--open must be a comma-separated list of ports, e.g. 25,22"
    local fam me
    local -A had
    for fam in $(families); do had[$fam]=$(table_existed "$fam" && echo old || echo new); done
    BASE_WHITELIST=("${WHITELIST[@]}")
    if [ "$SSH_WHITELIST" = 1 ]; then
        me=$(ssh_client)
        if [ -n "$me" ]; then BASE_WHITELIST+=("$me"); say "accepting this SSH session's client $me"; else no_ssh_client; fi
    fi
    [[ ,$OPEN, == *,22,* ]] || say "warning: port 22 is not in --open: new SSH sessions will be refused"
    for fam in $(families); do baseline_family "$fam" "${had[$fam]}"; done
    say "baseline: INPUT policy DROP, open TCP ports $OPEN; remove it with: $0 remove-baseline"
    if [ -n "$TRY" ]; then
        local seconds pidfile
        seconds=$(awk -v m="$TRY" 'BEGIN { s = m * 60; if (s < 1) s = 1; printf "%d", s }')
        pidfile=$(baseline_try_pidfile)
        mkdir -p "$(dirname "$pidfile")"
        cancel_timer "$pidfile" || true
        setsid bash -c "sleep $seconds && rm -f '$pidfile' && '$0' remove-baseline >/dev/null 2>&1" \
            </dev/null >/dev/null 2>&1 &
        echo $! > "$pidfile"
        say "trial: the baseline is removed again in $TRY minute(s) unless you run: $0 confirm"
    fi
}

do_remove_baseline() {
    need_root
    cancel_timer "$(baseline_try_pidfile)" || true
    for fam in 4 6; do remove_baseline_family "$fam"; done
    say "baseline removed"
}

do_confirm() {
    local confirmed=0
    cancel_try && confirmed=1
    cancel_timer "$(baseline_try_pidfile)" && confirmed=1
    if [ "$confirmed" = 1 ]; then say "confirmed: rules stay"; else say "nothing to confirm"; fi
}

case $ACTION in
    baseline) do_baseline ;;
    remove-baseline) do_remove_baseline ;;
    install) do_install ;;
    remove) do_remove ;;
    status) need_root; do_status ;;
    confirm) need_root; do_confirm ;;
    *) usage ;;
esac
