# Sourced by .ci/run: fetches the extra native drivers the core tests run on, without installing
# them over the system's (lavapipe from the release stays the default Vulkan driver, so the
# README's `cargo test --release` keeps meaning lavapipe 22 on Debian 12). Each function unpacks
# a Debian package into a cache folder and prints the ICD manifest to put in VK_ICD_FILENAMES.
# No host is named here: the mirror is the one the machine's own apt sources use.

drivers_cache="${BLOOP_DRIVERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bloop-drivers}"

drivers_sudo() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The first Debian mirror URI in the machine's apt sources (deb822 or one-line form).
drivers_debian_mirror() {
    local uri
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' | grep -v -- '-security' | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z+]+:\/\//) { print $i; break } }' |
            grep -v -- '-security' | head -n1 || true)
    fi
    [ -n "$uri" ] || { echo "no Debian mirror in the apt sources" >&2; return 1; }
    echo "$uri"
}

# apt-get download with a private sources list and package lists: the machine's apt state is
# left as it was (no backports suite added to it). $1: one-line source, then the packages.
drivers_apt_download() {
    local source="$1"
    shift
    local apt="$drivers_cache/apt"
    mkdir -p "$apt/lists/partial"
    echo "$source" >"$apt/sources.list"
    local options=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=$apt/none"
        -o "Dir::State::Lists=$apt/lists" -o "APT::Sandbox::User=root")
    apt-get -qq "${options[@]}" update
    (cd "$drivers_cache" && apt-get -qq "${options[@]}" download "$@")
}

drivers_codename() {
    . /etc/os-release && echo "$VERSION_CODENAME"
}

# Mesa 25's lavapipe from the backports suite; it links the system's LLVM 15.
drivers_lavapipe25_icd() {
    local dir="$drivers_cache/mesa-backports"
    if [ ! -e "$dir/lvp_icd.json" ]; then
        local codename mirror
        codename=$(drivers_codename)
        mirror=$(drivers_debian_mirror)
        rm -f "$drivers_cache"/mesa-vulkan-drivers_*.deb
        drivers_apt_download \
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $codename-backports main" \
            "mesa-vulkan-drivers/$codename-backports" >&2
        dpkg-deb -x "$drivers_cache"/mesa-vulkan-drivers_*.deb "$dir"
        # The package's manifest names the library bare, which would load the system's lavapipe.
        local lib
        lib=$(find "$dir" -name libvulkan_lvp.so | head -n1)
        printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "%s", "api_version": "1.3.0"}}\n' \
            "$lib" >"$dir/lvp_icd.json"
    fi
    echo "$dir/lvp_icd.json"
}

# SwiftShader, Google's Vulkan on the CPU, as Debian's chromium-common ships it.
drivers_swiftshader_icd() {
    local installed
    installed=$(dpkg -L chromium-common 2>/dev/null | grep 'vk_swiftshader_icd\.json$' | head -n1 || true)
    if [ -n "$installed" ]; then
        echo "$installed"
        return
    fi
    local dir="$drivers_cache/chromium-common"
    if [ ! -e "$dir/.unpacked" ]; then
        rm -f "$drivers_cache"/chromium-common_*.deb
        # The release's own suites are in the machine's sources already.
        (cd "$drivers_cache" && apt-get -qq -o APT::Sandbox::User=root download chromium-common) >&2 || {
            drivers_sudo apt-get update -qq >&2
            (cd "$drivers_cache" && apt-get -qq -o APT::Sandbox::User=root download chromium-common) >&2
        }
        dpkg-deb -x "$drivers_cache"/chromium-common_*.deb "$dir"
        touch "$dir/.unpacked"
    fi
    # Its manifest names the library relative to itself.
    find "$dir" -name vk_swiftshader_icd.json | head -n1
}

# Mesa's EGL and llvmpipe, for wgpu's GL back-end (the `gles` feature).
drivers_install_egl() {
    if ! ldconfig -p 2>/dev/null | grep 'libEGL_mesa\.so\.0' >/dev/null; then
        drivers_sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive drivers_sudo apt-get install -y -qq libegl1 libegl-mesa0 libgl1-mesa-dri
    fi
}
