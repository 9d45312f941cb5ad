#!/usr/bin/env bash
# setup-nfqueue.sh — install, remove or show the kernel side of inspector.
#
#   setup-nfqueue.sh install [--queue N] [--ports 25,22] [--whitelist CIDR]... [--try MINUTES]
#                            [--no-ssh-whitelist] [--connbytes BYTES] [--maxelem N] [--no-ipv6]
#   setup-nfqueue.sh remove
#   setup-nfqueue.sh status
#   setup-nfqueue.sh confirm          # keep rules installed with --try
#
# install (idempotent) creates, for IPv4 (iptables) and IPv6 (ip6tables):
#   ipsets  inspector-ban4 (hash:ip) / inspector-ban6 (hash:net, /64 bans)   with timeouts
#           inspector-white4 / inspector-white6 (hash:net)                     whitelisted sources
#   chain   INSPECTOR, jumped to from the top of INPUT for TCP to the protected ports (not from lo):
#             banned source                     -> DROP   (the kernel enforces bans from then on)
#             whitelisted source                -> RETURN (never inspected, limited or banned)
#             conntrack INVALID (bad checksums)  -> DROP   (cannot desync the inspector's reassembly)
#             TCP NEW without SYN               -> DROP   (the seeds' "! --syn --state NEW")
#             connection marked decided (0x1)   -> RETURN (nothing left to inspect)
#             first BYTES of the connection     -> NFQUEUE --queue-bypass (flows when no inspector runs)
# It never locks out the SSH session it runs from: that client's address is whitelisted
# unless --no-ssh-whitelist. With --try MINUTES everything is removed again after MINUTES
# unless "setup-nfqueue.sh confirm" is run (the seeds' 10-minute safety net).
# remove deletes exactly what install added and restores what it changed, so
# iptables-save and ip6tables-save print what they printed before.
set -euo pipefail

CHAIN=INSPECTOR
BAN4=inspector-ban4 BAN6=inspector-ban6 WHITE4=inspector-white4 WHITE6=inspector-white6
TAG=inspector-setup
QUEUE=0 PORTS=25,22 TRY="" SSH_WHITELIST=1 CONNBYTES=16384 MAXELEM=1000000 IPV6=1
WHITELIST=()

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
        --connbytes) CONNBYTES=${2:?}; shift ;;
        --maxelem) MAXELEM=${2:?}; shift ;;
        --no-ipv6) IPV6=0 ;;
        -h|--help) usage ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
[[ $QUEUE =~ ^[0-9]+$ ]] && [ "$QUEUE" -le 65535 ] || die "--queue must be 0..65535"
[[ $PORTS =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--ports must be a comma-separated list of ports, e.g. 25,22"
[[ $CONNBYTES =~ ^[0-9]+$ ]] || die "--connbytes must be a number of bytes"
[[ $MAXELEM =~ ^[0-9]+$ ]] || die "--maxelem must be a number"

families() { echo 4; [ "$IPV6" = 1 ] && echo 6; return 0; }
ipt() { if [ "$1" = 4 ]; then shift; iptables -w "$@"; else shift; ip6tables -w "$@"; fi; }
ipt_save() { if [ "$1" = 4 ]; then iptables-save; else ip6tables-save; fi; }
nft_family() { if [ "$1" = 4 ]; then echo ip; else echo ip6; fi; }
ban_set() { if [ "$1" = 4 ]; then echo $BAN4; else echo $BAN6; fi; }
white_set() { if [ "$1" = 4 ]; then echo $WHITE4; else echo $WHITE6; fi; }
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
        "connbytes match|-m connbytes --connbytes 0:$CONNBYTES --connbytes-dir original --connbytes-mode bytes -j RETURN"
        "multiport match|-p tcp -m multiport --dports $PORTS -j RETURN"
        "comment match|-m comment --comment probe -j RETURN"
        "NFQUEUE target|-j NFQUEUE --queue-num $QUEUE --queue-bypass"
    )
    for check in "${checks[@]}"; do
        local name=${check%%|*} rule=${check#*|}
        # shellcheck disable=SC2086
        if ! out=$(ipt "$fam" -A $probe $rule 2>&1); then
            ipt "$fam" -F $probe; ipt "$fam" -X $probe
            die "the kernel lacks the $name for IPv$fam ($out); nothing was changed"
        fi
    done
    ipt "$fam" -F $probe
    ipt "$fam" -X $probe
}

table_existed() { ipt_save "$1" | grep -q '^\*filter'; }

create_sets() {
    local fam=$1 family
    family=$([ "$fam" = 4 ] && echo inet || echo inet6)
    local bantype=hash:ip
    [ "$fam" = 6 ] && bantype=hash:net
    ipset create -exist "$(ban_set "$fam")" $bantype family $family timeout 3600 maxelem "$MAXELEM" \
        || die "ipset $(ban_set "$fam") exists with other settings (remove it first)"
    ipset create -exist "$(white_set "$fam")" hash:net family $family maxelem 65536 \
        || die "ipset $(white_set "$fam") exists with other settings (remove it first)"
}

ssh_client() {
    # the address of the SSH client this script runs under, if any
    local c=${SSH_CONNECTION:-${SSH_CLIENT:-}}
    [ -n "$c" ] && echo "${c%% *}"
    return 0
}

install_family() {
    # $2/$3: the conntrack accounting setting and whether the filter table existed before
    # install touched anything (adding a connbytes rule makes the kernel force accounting on)
    local fam=$1 acct=$2 had_table=$3
    if ipt "$fam" -S $CHAIN >/dev/null 2>&1; then
        # reinstall: keep the state recorded by the first install
        local recorded
        recorded=$(ipt_save "$fam" | sed -n "s/.*--comment \"\{0,1\}$TAG acct=\([01]\) table=\([a-z]*\).*/\1 \2/p" | head -1)
        if [ -n "$recorded" ]; then acct=${recorded% *}; had_table=${recorded#* }; fi
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
    ipt "$fam" -A $CHAIN -m connmark --mark 0x1/0x1 -j RETURN
    ipt "$fam" -A $CHAIN -m connbytes --connbytes 0:"$CONNBYTES" --connbytes-dir original \
        --connbytes-mode bytes -j NFQUEUE --queue-num "$QUEUE" --queue-bypass
    ipt "$fam" -A $CHAIN -j RETURN
    ipt "$fam" -I INPUT 1 -p tcp -m multiport --dports "$PORTS" ! -i lo \
        -m comment --comment "$TAG acct=$acct table=$had_table" -j $CHAIN
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
    local fam=$1 recorded acct="" had_table=old
    recorded=$(ipt_save "$fam" 2>/dev/null | sed -n "s/.*--comment \"\{0,1\}$TAG acct=\([01]\) table=\([a-z]*\).*/\1 \2/p" | head -1)
    if [ -n "$recorded" ]; then acct=${recorded% *}; had_table=${recorded#* }; fi
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
    if [ -n "$acct" ] && [ "$fam" = 4 ]; then
        sysctl -qw net.netfilter.nf_conntrack_acct="$acct" || true
    fi
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
    local acct
    declare -A had_table
    acct=$(sysctl -n net.netfilter.nf_conntrack_acct 2>/dev/null || echo 0)
    for fam in $(families); do had_table[$fam]=$(table_existed "$fam" && echo old || echo new); done
    for fam in $(families); do create_sets "$fam"; done
    for fam in $(families); do probe_kernel "$fam"; done
    for fam in $(families); do install_family "$fam" "$acct" "${had_table[$fam]}"; done
    sysctl -qw net.netfilter.nf_conntrack_acct=1 || die "cannot enable conntrack accounting (connbytes needs it)"
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
    say "installed: ports $PORTS -> NFQUEUE $QUEUE (bypass when no inspector runs), bans in $BAN4/$BAN6"
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
