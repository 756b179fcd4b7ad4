#!/usr/bin/env bash
# Installs Hecate on the coordinator, declaratively and idempotently: the product into its own venv
# release under /opt/hecate, the `hecate` link, the example configuration (only when missing), the
# state dir, the systemd units and, opt-in, NUT + a udev rule. A second run with the same source and
# settings writes nothing, builds nothing, restarts nothing and says "nothing changed".
# Settings come as flags only (never environment variables, which could collide with the daemon's
# HECATE_* overrides) and persist in /etc/hecate/install.conf. docs/install.md is the manual.
set -euo pipefail
umask 022

PROG=install.sh
SELF=$(readlink -f "${BASH_SOURCE[0]}")
HOST_DIR=$(dirname "$SELF")
CHECKOUT=$(dirname "$HOST_DIR")
MARK="# Written by Hecate's install.sh (host/install.sh): it rewrites this file; --uninstall --purge removes it."
UNITS=(hecate.service hecate-bootstrap.service hecate-update.service hecate-update.timer)
USB_DRIVERS=" usbhid-ups blazer_usb nutdrv_qx nutdrv_atcl_usb tripplite_usb richcomm_usb bcmxcp_usb riello_usb "

die() { echo "$PROG: $*" >&2; exit 1; }
usage_error() { echo "$PROG: $*" >&2; echo "$PROG: see '$PROG --help'" >&2; exit 2; }

usage() {
    cat <<'EOF'
Usage: install.sh [options]          install or update Hecate (settings persist in /etc/hecate/install.conf)
       install.sh --uninstall [--purge] [--root DIR]

Install source (not persisted):
  --source PATH                  a checkout or a built hecate wheel (default: the checkout holding this script)
  --find-links DIR               a wheelhouse for pip (offline installs)
  --no-index                     do not use a package index (with --find-links)
  --python PATH                  the system Python that builds the venv (default: /usr/bin/python3)
Settings (persisted):
  --enable-bootstrap yes|no      enable hecate-bootstrap.service at boot (default: no)
  --manage-nut yes|no            write and restart the NUT configuration and the udev rule (default: no)
  --nut-ups-name NAME            the UPS's name in NUT (default: pyrphoros)
  --nut-driver DRIVER            NUT driver (default: usbhid-ups)
  --nut-port PORT                the driver's port (default: auto)
  --nut-vendor-id HEX            USB vendor id, USB drivers only (default: 0764)
  --nut-product-id HEX           USB product id, USB drivers only (default: 0601)
  --nut-monitor-user NAME        upsd user of upsmon (default: upsmon)
  --nut-monitor-password-file F  its password (default: generated once into /etc/hecate/nut-monitor.password)
Run:
  --root DIR                     install into a directory tree: nothing is started, restarts are reported
  --no-start                     do not start or restart any service
  --uninstall                    stop, disable and remove the units, the link and /opt/hecate
  --purge                        with --uninstall: also /etc/hecate, the state dir and the NUT files Hecate wrote
  -h, --help                     this help
EOF
}

# --- flags -----------------------------------------------------------------------------------------
SOURCE="" FIND_LINKS="" NO_INDEX=0 PYTHON=/usr/bin/python3 ROOT="" NO_START=0 UNINSTALL=0 PURGE=0
declare -A SET=()
SETTINGS=(ENABLE_BOOTSTRAP MANAGE_NUT NUT_UPS_NAME NUT_DRIVER NUT_PORT NUT_VENDOR_ID NUT_PRODUCT_ID
          NUT_MONITOR_USER NUT_MONITOR_PASSWORD_FILE)
declare -A DEFAULT=([ENABLE_BOOTSTRAP]=no [MANAGE_NUT]=no [NUT_UPS_NAME]=pyrphoros [NUT_DRIVER]=usbhid-ups
                    [NUT_PORT]=auto [NUT_VENDOR_ID]=0764 [NUT_PRODUCT_ID]=0601 [NUT_MONITOR_USER]=upsmon
                    [NUT_MONITOR_PASSWORD_FILE]="")

need_value() { [[ $# -ge 2 && -n $2 ]] || usage_error "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --source) need_value "$@"; SOURCE=$2; shift 2 ;;
        --find-links) need_value "$@"; FIND_LINKS=$2; shift 2 ;;
        --no-index) NO_INDEX=1; shift ;;
        --python) need_value "$@"; PYTHON=$2; shift 2 ;;
        --root) need_value "$@"; ROOT=$2; shift 2 ;;
        --no-start) NO_START=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        --enable-bootstrap|--manage-nut|--nut-ups-name|--nut-driver|--nut-port|--nut-vendor-id|--nut-product-id|\
        --nut-monitor-user|--nut-monitor-password-file)
            need_value "$@"; key=${1#--}; key=${key//-/_}; SET[${key^^}]=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
done

if [[ -n $ROOT ]]; then
    [[ -d $ROOT ]] || usage_error "--root $ROOT is not a directory"
    ROOT=$(readlink -f "$ROOT")
    [[ $ROOT != / ]] || ROOT=""
fi
[[ $PURGE -eq 0 || $UNINSTALL -eq 1 ]] || usage_error "--purge only goes with --uninstall"
if [[ -z $ROOT && $EUID -ne 0 ]]; then die "must run as root (or with --root DIR)"; fi
# One run at a time (a lock on this script: nothing is written for it).
exec 9<"$SELF"
flock -n 9 || die "another install.sh run is in progress"

# Paths on the target system; $ROOT prefixes them on disk.
PREFIX=/opt/hecate ETC=/etc/hecate STATE=/var/lib/hecate UNIT_DIR=/etc/systemd/system LINK=/usr/local/bin/hecate
CONF=$ETC/install.conf PASSWORD_FILE=$ETC/nut-monitor.password CREDENTIALS_FILE=$ETC/nut.credentials NUT_DIR=/etc/nut
UDEV_RULE=/etc/udev/rules.d/62-hecate-ups.rules

CHANGES=0
change() { CHANGES=$((CHANGES + 1)); echo "$*"; }
note() { echo "$*"; }
live() { [[ -z $ROOT ]]; }

# --- settings: install.conf, then flags, then defaults; all checked before anything is written --------
declare -A CUR=()
PREV_UPS_NAME=""
if [[ -f $ROOT$CONF ]]; then
    while IFS= read -r line || [[ -n $line ]]; do
        [[ -z $line || $line == \#* ]] && continue
        [[ $line == *=* ]] || die "$ROOT$CONF: not KEY=VALUE: $line"
        k=${line%%=*}
        if [[ " ${SETTINGS[*]} " == *" $k "* ]]; then CUR[$k]=${line#*=}; fi
        if [[ $k == NUT_UPS_NAME ]]; then PREV_UPS_NAME=${line#*=}; fi
    done < "$ROOT$CONF"
fi
for k in "${SETTINGS[@]}"; do
    if [[ -v SET[$k] ]]; then CUR[$k]=${SET[$k]}; elif [[ ! -v CUR[$k] ]]; then CUR[$k]=${DEFAULT[$k]}; fi
done

check() {  # check KEY REGEX WHAT
    local flag=${1,,}
    [[ ${CUR[$1]} =~ $2 ]] || usage_error "--${flag//_/-} '${CUR[$1]}': $3"
}
check ENABLE_BOOTSTRAP '^(yes|no)$' "yes or no"
check MANAGE_NUT '^(yes|no)$' "yes or no"
check NUT_UPS_NAME '^[A-Za-z0-9_-]{1,64}$' "letters, digits, '_' and '-' only"
check NUT_DRIVER '^[a-z0-9_-]{1,64}$' "a NUT driver name (usbhid-ups, dummy-ups, ...)"
check NUT_PORT '^[A-Za-z0-9_./:@-]{1,200}$' "'auto', a device or a file path (no spaces or quotes)"
check NUT_VENDOR_ID '^[0-9a-fA-F]{4}$' "four hex digits"
check NUT_PRODUCT_ID '^[0-9a-fA-F]{4}$' "four hex digits"
check NUT_MONITOR_USER '^[A-Za-z0-9_.-]{1,64}$' "letters, digits, '_', '.' and '-' only"
check NUT_MONITOR_PASSWORD_FILE '^(/[^[:space:]]*)?$' "an absolute path"
if [[ -n ${CUR[NUT_MONITOR_PASSWORD_FILE]} ]]; then
    [[ -r ${CUR[NUT_MONITOR_PASSWORD_FILE]} ]] \
        || usage_error "--nut-monitor-password-file ${CUR[NUT_MONITOR_PASSWORD_FILE]}: not a readable file"
    PW=$(head -n1 "${CUR[NUT_MONITOR_PASSWORD_FILE]}")
    [[ $PW =~ ^[A-Za-z0-9_.,:+=@%-]{8,128}$ ]] || usage_error "--nut-monitor-password-file: the password (its \
first line) must be 8-128 characters without spaces, quotes or '#'"
fi
IS_USB=0
[[ $USB_DRIVERS == *" ${CUR[NUT_DRIVER]} "* ]] && IS_USB=1

if [[ $UNINSTALL -eq 0 ]]; then
    [[ -n $SOURCE ]] || SOURCE=$CHECKOUT
    [[ -e $SOURCE ]] || usage_error "--source $SOURCE does not exist"
    SOURCE=$(readlink -f "$SOURCE")
    if [[ -d $SOURCE ]]; then
        [[ -f $SOURCE/pyproject.toml && -d $SOURCE/controller/hecate ]] \
            || usage_error "--source $SOURCE is not a Hecate checkout (no pyproject.toml, controller/hecate)"
        VERSION=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$SOURCE/pyproject.toml" | head -n1)
    elif [[ $SOURCE == *.whl ]]; then
        base=$(basename "$SOURCE")
        [[ $base == hecate-*.whl ]] || usage_error "--source $SOURCE is not a hecate wheel"
        VERSION=$(cut -d- -f2 <<<"$base")
    else
        usage_error "--source $SOURCE is neither a checkout nor a .whl"
    fi
    [[ $VERSION =~ ^[A-Za-z0-9.+!_]+$ ]] || die "cannot read the version of $SOURCE"
    [[ -z $FIND_LINKS || -d $FIND_LINKS ]] || usage_error "--find-links $FIND_LINKS is not a directory"
    [[ $NO_INDEX -eq 0 || -n $FIND_LINKS ]] || usage_error "--no-index needs --find-links DIR"
    command -v "$PYTHON" >/dev/null || usage_error "--python $PYTHON not found"
fi

# --- helpers -----------------------------------------------------------------------------------------
# put_file DEST MODE GROUP: stdin becomes DEST (on the target) unless DEST already holds exactly that;
# the mode and group are set either way. WROTE=1 when the content changed. (The helpers always return
# 0 and report through globals: a function called in a condition would run without errexit.)
put_file() {
    local dest=$ROOT$1 mode=$2 group=$3 tmp
    WROTE=0
    mkdir -p "$(dirname "$dest")"
    tmp=$(mktemp "$(dirname "$dest")/.hecate-install.XXXXXX")
    cat > "$tmp"
    if [[ -f $dest && ! -L $dest ]] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
    else
        chmod "$mode" "$tmp"
        set_group "$tmp" "$group"
        mv -f "$tmp" "$dest"
        change "wrote $dest"
        WROTE=1
    fi
    fix_mode "$dest" "$mode" "$group"
}

set_group() {  # set_group PATH GROUP: root:GROUP when we are root and GROUP exists
    if [[ $EUID -eq 0 ]] && getent group "$2" >/dev/null; then chown "root:$2" "$1"; fi
}

fix_mode() {  # fix_mode PATH MODE GROUP
    local path=$1 mode=$2 group=$3 want_group=$3
    if [[ $EUID -ne 0 ]] || ! getent group "$group" >/dev/null; then want_group=$(stat -c %G "$path"); fi
    if [[ $(stat -c %a "$path") != "${mode#0}" || $(stat -c %G "$path") != "$want_group" ]]; then
        chmod "$mode" "$path"
        set_group "$path" "$group"
        change "set $path to $mode root:$want_group"
    fi
}

make_dir() {  # make_dir DIR MODE
    local dir=$ROOT$1
    if [[ ! -d $dir ]]; then
        mkdir -p "$dir"
        chmod "$2" "$dir"
        change "created $dir ($2)"
    elif [[ $(stat -c %a "$dir") != "${2#0}" ]]; then
        chmod "$2" "$dir"
        change "set $dir to $2"
    fi
}

put_link() {  # put_link LINK TARGET [MESSAGE]: an atomic switch (new link + rename) when it differs
    local link=$ROOT$1 target=$2
    if [[ -L $link && $(readlink "$link") == "$target" ]]; then return 0; fi
    mkdir -p "$(dirname "$link")"
    ln -sfn "$target" "$link.hecate-new"
    mv -fT "$link.hecate-new" "$link"
    change "${3:-linked $link -> $target}"
}

source_digest() {
    if [[ -f $SOURCE ]]; then
        echo "wheel sha256:$(sha256sum "$SOURCE" | cut -d' ' -f1)"
    else
        # The packaging inputs of the checkout (as the wheel is built from them), by path and content.
        (cd "$SOURCE" && find pyproject.toml README.md controller -type f ! -path '*/__pycache__/*' \
            ! -path '*.egg-info/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) \
            | sha256sum | sed 's/ .*//; s/^/tree sha256:/'
    fi
}

lock_held() {  # a run (hecate startup/shutdown, the daemon's shutdown) holds <state_dir>/lock
    local lock=$ROOT$STATE/lock
    [[ -f $lock ]] && ! flock -n "$lock" true
}

unit_file() {  # where a unit's file is on the target (ours first), for the --root symlinks
    local name=$1 dir
    [[ $name == *@*.* ]] && name="${name%%@*}@.${name##*.}"
    for dir in /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
        if [[ -f $ROOT$dir/$name ]]; then echo "$dir/$name"; return 0; fi
    done
    return 1
}

enable_unit() {  # enable UNIT on the live system, or its [Install] symlinks in the --root tree
    local unit=$1 file target
    if live; then
        systemctl is-enabled --quiet "$unit" 2>/dev/null && return 0
        systemctl enable --quiet "$unit"
        change "enabled $unit"
        return 0
    fi
    file=$(unit_file "$unit") || { note "cannot enable $unit: its unit file is not in $ROOT"; return 0; }
    local targets
    read -ra targets <<<"$(sed -n 's/^WantedBy=//p' "$ROOT$file" | tr '\n' ' ')"
    for target in "${targets[@]}"; do
        put_link "$UNIT_DIR/$target.wants/$unit" "$file" "enabled $unit ($target)"
    done
}

disable_unit() {
    local unit=$1 link file
    if live; then
        file=$(unit_file "$unit") || return 0
        grep -q '^\[Install\]' "$file" || return 0  # a static unit: nothing to disable
        systemctl is-enabled --quiet "$unit" 2>/dev/null || return 0
        systemctl disable --quiet "$unit"
        change "disabled $unit"
        return 0
    fi
    for link in "$ROOT$UNIT_DIR"/*.wants/"$unit"; do
        [[ -L $link ]] || continue
        rm -f "$link"
        change "disabled $unit (removed $link)"
    done
}

restart_units() {  # restart_units UNIT...: or say why not
    local unit
    for unit in "$@"; do
        if ! live; then
            note "would restart $unit"
        elif [[ $NO_START -eq 1 ]]; then
            note "not restarting $unit (--no-start)"
        else
            systemctl restart "$unit"
            change "restarted $unit"
        fi
    done
}

# --- uninstall ---------------------------------------------------------------------------------------
uninstall() {
    if lock_held; then die "a Hecate run holds $ROOT$STATE/lock: uninstall after it ends"; fi
    local unit f
    for unit in "${UNITS[@]}"; do
        if live; then
            if systemctl is-active --quiet "$unit" 2>/dev/null; then
                systemctl stop "$unit"
                change "stopped $unit"
            fi
        fi
        disable_unit "$unit"
        if [[ -e $ROOT$UNIT_DIR/$unit ]]; then rm -f "$ROOT$UNIT_DIR/$unit"; change "removed $ROOT$UNIT_DIR/$unit"; fi
    done
    if live && [[ $CHANGES -gt 0 ]]; then systemctl daemon-reload; note "reloaded systemd"; fi
    if [[ -L $ROOT$LINK && $(readlink "$ROOT$LINK") == "$PREFIX"/* ]]; then
        rm -f "$ROOT$LINK"; change "removed $ROOT$LINK"
    fi
    if [[ -e $ROOT$PREFIX ]]; then rm -rf "$ROOT$PREFIX"; change "removed $ROOT$PREFIX"; fi
    if [[ $PURGE -eq 1 ]]; then
        local before=$CHANGES
        for f in "$ROOT$NUT_DIR"/{nut.conf,ups.conf,upsd.conf,upsd.users,upsmon.conf} "$ROOT$UDEV_RULE"; do
            if [[ ! -f $f ]] || ! grep -qxF "$MARK" "$f"; then continue; fi
            if [[ -f $f.hecate-orig ]]; then
                mv -f "$f.hecate-orig" "$f"; change "restored $f from $f.hecate-orig"
            else
                rm -f "$f"; change "removed $f"
            fi
        done
        if [[ $CHANGES -gt $before ]]; then
            note "the NUT units keep what they loaded until they restart (systemctl restart nut-server nut-monitor)"
        fi
        for f in "$ROOT$ETC" "$ROOT$STATE"; do
            if [[ -e $f ]]; then rm -rf "$f"; change "removed $f"; fi
        done
    else
        if [[ -e $ROOT$ETC || -e $ROOT$STATE ]]; then note "kept $ROOT$ETC and $ROOT$STATE (--purge removes them)"; fi
    fi
    finish
}

finish() {
    if [[ $CHANGES -eq 0 ]]; then echo "nothing changed"; fi
    exit 0
}

if [[ $UNINSTALL -eq 1 ]]; then uninstall; fi

# --- install: settings, directories, configuration ----------------------------------------------------
make_dir "$ETC" 0755
put_file "$CONF" 0600 root < <(
    echo "# Settings of Hecate's install.sh: a run without flags keeps them (docs/install.md)."
    for k in "${SETTINGS[@]}"; do echo "$k=${CUR[$k]}"; done
)
if [[ ! -e $ROOT$ETC/hecate.yaml ]]; then
    put_file "$ETC/hecate.yaml" 0640 root < "$HOST_DIR/hecate.example.yaml"
fi
make_dir "$STATE" 0700

# --- the release --------------------------------------------------------------------------------------
make_dir "$PREFIX/releases" 0755
DIGEST=$(source_digest)
RELEASE_CHANGED=0
CURRENT=$(readlink "$ROOT$PREFIX/current" 2>/dev/null || true)
if [[ -n $CURRENT && -x $ROOT$PREFIX/$CURRENT/bin/hecate \
      && $(cat "$ROOT$PREFIX/$CURRENT/.hecate-source" 2>/dev/null) == "$DIGEST" ]]; then
    :
else
    ID="$VERSION-$(date -u +%Y%m%dT%H%M%SZ)"
    REL=$ROOT$PREFIX/releases/$ID
    [[ ! -e $REL ]] || die "release $REL already exists: run again in a second"
    PIP=(--quiet --disable-pip-version-check --no-cache-dir)
    [[ $NO_INDEX -eq 0 ]] || PIP+=(--no-index)
    [[ -z $FIND_LINKS ]] || PIP+=(--find-links "$FIND_LINKS")
    BUILD=$(mktemp -d)
    trap 'rm -rf "$REL" "$BUILD"' EXIT
    TARGET=$SOURCE
    if [[ -d $SOURCE ]]; then
        # pip builds a checkout in place: build from a copy of its packaging inputs (the checkout may be read-only).
        cp -r "$SOURCE/pyproject.toml" "$SOURCE/README.md" "$SOURCE/controller" "$BUILD/"
        find "$BUILD" \( -name '__pycache__' -o -name '*.egg-info' \) -prune -exec rm -rf {} +
        TARGET=$BUILD
    fi
    "$PYTHON" -m venv "$REL" || die "$PYTHON -m venv $REL failed"
    if ! out=$("$REL/bin/python" -m pip install "${PIP[@]}" "$TARGET" 2>&1); then
        die "pip install $SOURCE failed (release $ID not built): ${out: -2000}"
    fi
    "$REL/bin/hecate" --version >/dev/null 2>&1 || die "the new release $ID does not run: $REL/bin/hecate --version"
    echo "$DIGEST" > "$REL/.hecate-source"
    trap - EXIT
    rm -rf "$BUILD"
    change "built release $ID from $SOURCE"
    if [[ -n $CURRENT ]]; then put_link "$PREFIX/previous" "$CURRENT"; fi
    put_link "$PREFIX/current" "releases/$ID"
    CURRENT=releases/$ID
    RELEASE_CHANGED=1
fi
KEEP_PREV=$(readlink "$ROOT$PREFIX/previous" 2>/dev/null || true)
for rel in "$ROOT$PREFIX"/releases/*; do
    [[ -e $rel ]] || continue
    name=releases/$(basename "$rel")
    if [[ $name != "$CURRENT" && $name != "$KEEP_PREV" ]]; then rm -rf "$rel"; change "pruned release $rel"; fi
done
put_link "$LINK" "$PREFIX/current/bin/hecate"

# --- units --------------------------------------------------------------------------------------------
UNITS_CHANGED=0
DAEMON_UNIT_CHANGED=0
TIMER_CHANGED=0
for unit in "${UNITS[@]}"; do
    put_file "$UNIT_DIR/$unit" 0644 root < "$HOST_DIR/systemd/$unit"
    if [[ $WROTE -eq 1 ]]; then
        UNITS_CHANGED=1
        [[ $unit != hecate.service ]] || DAEMON_UNIT_CHANGED=1
        [[ $unit != hecate-update.timer ]] || TIMER_CHANGED=1
    fi
done
if live && [[ $UNITS_CHANGED -eq 1 ]]; then systemctl daemon-reload; note "reloaded systemd"; fi
enable_unit hecate.service
enable_unit hecate-update.timer
if [[ ${CUR[ENABLE_BOOTSTRAP]} == yes ]]; then enable_unit hecate-bootstrap.service; else disable_unit hecate-bootstrap.service; fi

# --- NUT + udev ---------------------------------------------------------------------------------------
nut_file() {  # nut_file PATH MODE: stdin under the marker; a file we did not write is kept once as .hecate-orig
    local dest=$ROOT$1
    if [[ -f $dest && ! -e $dest.hecate-orig ]] && ! grep -qxF "$MARK" "$dest"; then
        cp -p "$dest" "$dest.hecate-orig"
        change "kept the original $dest as $dest.hecate-orig"
    fi
    local body
    body=$(cat)
    put_file "$1" "$2" nut <<<"$MARK"$'\n'"$body"
}

if [[ ${CUR[MANAGE_NUT]} == yes ]]; then
    NAME=${CUR[NUT_UPS_NAME]} USER_=${CUR[NUT_MONITOR_USER]}
    if [[ -z ${CUR[NUT_MONITOR_PASSWORD_FILE]} ]]; then
        if [[ ! -s $ROOT$PASSWORD_FILE ]]; then
            put_file "$PASSWORD_FILE" 0600 root < <(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo)
        fi
        PW=$(head -n1 "$ROOT$PASSWORD_FILE")
    fi
    NUT_RESTART=()
    nut_file "$NUT_DIR/nut.conf" 0640 <<EOF
# upsd serves the UPS on loopback; Hecate and upsmon read it there.
MODE=netserver
EOF
    [[ $WROTE -eq 0 ]] || NUT_RESTART+=(nut-server.service nut-monitor.service)
    nut_file "$NUT_DIR/ups.conf" 0640 < <(
        echo "[$NAME]"
        echo "    driver = ${CUR[NUT_DRIVER]}"
        echo "    port = ${CUR[NUT_PORT]}"
        if [[ $IS_USB -eq 1 ]]; then
            echo "    vendorid = ${CUR[NUT_VENDOR_ID]}"
            echo "    productid = ${CUR[NUT_PRODUCT_ID]}"
        fi
        echo "    desc = \"the coordinator's UPS (Hecate)\""
    )
    [[ $WROTE -eq 0 ]] || NUT_RESTART+=(nut-driver-enumerator.service "nut-driver@$NAME.service" nut-server.service)
    nut_file "$NUT_DIR/upsd.conf" 0640 <<EOF
LISTEN 127.0.0.1 3493
LISTEN ::1 3493
EOF
    [[ $WROTE -eq 0 ]] || NUT_RESTART+=(nut-server.service)
    # `upsmon primary` lets the login set FSD (hecate.yaml: ups[].set_fsd); upsmon itself still only
    # watches as a secondary (upsmon.conf below), so nothing but Hecate ever sets it.
    nut_file "$NUT_DIR/upsd.users" 0640 <<EOF
[$USER_]
    password = $PW
    upsmon primary
    instcmds = shutdown.return
EOF
    [[ $WROTE -eq 0 ]] || NUT_RESTART+=(nut-server.service)
    # The same login for Hecate's UPS power cycle and FSD (hecate.yaml: ups[].credentials_file).
    put_file "$CREDENTIALS_FILE" 0600 root <<<"$USER_:$PW"
    # upsmon only watches: power value 0 and MINSUPPLIES 0 mean it never shuts this host down itself
    # (Hecate's ordered shutdown powers the coordinator off last); its SHUTDOWNCMD only logs, and
    # without POWERDOWNFLAG it never tells the UPS to cut power. docs/install.md explains why.
    nut_file "$NUT_DIR/upsmon.conf" 0640 <<EOF
MONITOR $NAME@localhost 0 $USER_ $PW secondary
MINSUPPLIES 0
SHUTDOWNCMD "/usr/bin/logger -t upsmon 'NUT shutdown request ignored: Hecate runs the ordered shutdown'"
NOTIFYFLAG ONBATT SYSLOG
NOTIFYFLAG ONLINE SYSLOG
NOTIFYFLAG LOWBATT SYSLOG
NOTIFYFLAG FSD SYSLOG
NOTIFYFLAG COMMBAD SYSLOG
NOTIFYFLAG COMMOK SYSLOG
NOTIFYFLAG NOCOMM SYSLOG
NOTIFYFLAG REPLBATT SYSLOG
EOF
    [[ $WROTE -eq 0 ]] || NUT_RESTART+=(nut-monitor.service)
    UDEV_CHANGED=0
    if [[ $IS_USB -eq 1 ]]; then
        vid=${CUR[NUT_VENDOR_ID],,} pid=${CUR[NUT_PRODUCT_ID],,}
        nut_file "$UDEV_RULE" 0644 <<EOF
# The UPS's USB device belongs to group nut, so the NUT driver (user nut) can open it.
SUBSYSTEM=="usb", ATTR{idVendor}=="$vid", ATTR{idProduct}=="$pid", MODE="0660", GROUP="nut"
EOF
        [[ $WROTE -eq 0 ]] || UDEV_CHANGED=1
    elif [[ -f $ROOT$UDEV_RULE ]] && grep -qxF "$MARK" "$ROOT$UDEV_RULE"; then
        rm -f "$ROOT$UDEV_RULE"; change "removed $ROOT$UDEV_RULE (the driver is not a USB driver)"; UDEV_CHANGED=1
    fi
    if [[ -n $PREV_UPS_NAME && $PREV_UPS_NAME != "$NAME" ]]; then  # the renamed UPS's old driver instance
        disable_unit "nut-driver@$PREV_UPS_NAME.service"
        if ! live; then note "would stop nut-driver@$PREV_UPS_NAME.service"
        elif [[ $NO_START -eq 0 ]] && systemctl is-active --quiet "nut-driver@$PREV_UPS_NAME.service"; then
            systemctl stop "nut-driver@$PREV_UPS_NAME.service"; change "stopped nut-driver@$PREV_UPS_NAME.service"
        fi
    fi
    for unit in nut.target nut-driver.target nut-driver-enumerator.service "nut-driver@$NAME.service" \
                nut-server.service nut-monitor.service; do
        enable_unit "$unit"
    done
    # Restart each affected unit once, drivers before the server before the monitor.
    ORDERED=()
    for unit in nut-driver-enumerator.service "nut-driver@$NAME.service" nut-server.service nut-monitor.service; do
        [[ " ${NUT_RESTART[*]} " == *" $unit "* ]] && ORDERED+=("$unit")
    done
    if [[ ${#ORDERED[@]} -gt 0 ]]; then restart_units "${ORDERED[@]}"; fi
    if [[ $UDEV_CHANGED -eq 1 ]]; then
        if ! live; then
            note "would reload the udev rules"
        elif systemd-detect-virt --container --quiet || [[ ! -d /run/udev ]]; then
            note "udev rules not reloaded: no udev here (a container); they apply on a host with udev"
        else
            udevadm control --reload
            [[ $IS_USB -eq 0 ]] || udevadm trigger --subsystem-match=usb \
                --attr-match="idVendor=${CUR[NUT_VENDOR_ID],,}" --attr-match="idProduct=${CUR[NUT_PRODUCT_ID],,}"
            change "reloaded the udev rules"
        fi
    fi
fi

# --- the daemon ---------------------------------------------------------------------------------------
if [[ $TIMER_CHANGED -eq 1 ]]; then
    if ! live; then note "would restart hecate-update.timer"
    elif [[ $NO_START -eq 0 ]]; then systemctl restart hecate-update.timer; change "restarted hecate-update.timer"; fi
fi
if [[ $DAEMON_UNIT_CHANGED -eq 1 || $RELEASE_CHANGED -eq 1 ]]; then
    if lock_held; then
        note "a Hecate run holds $ROOT$STATE/lock: hecate.service keeps its release until its next restart"
    elif ! live; then
        note "would restart hecate.service"
    elif [[ $NO_START -eq 1 ]]; then
        note "not starting hecate.service (--no-start)"
    elif systemctl is-active --quiet hecate.service; then
        systemctl restart hecate.service
        change "restarted hecate.service"
    else
        systemctl start hecate.service
        change "started hecate.service"
    fi
fi
finish
