#!/usr/bin/env bash
# make deb: builds build/cordon_<version>_<arch>.deb from `make install DESTDIR=<stage> PREFIX=/usr`,
# with dpkg-deb alone (no debhelper, no source package): the control file, maintainer scripts,
# copyright and changelog come from packaging/deb/, the Depends from dpkg-shlibdeps.
#
#   DEB_VERSION  the package version (default: kCordonVersion from userspace/daemon/daemon.h,
#                Debian revision 1); tests build a higher one to try upgrades
#   DEB_OUT      where the .deb goes (default: $BUILD)
#   BUILD, MAKE  as in the Makefile
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
MAKE=${MAKE:-make}
DEB_OUT=${DEB_OUT:-$BUILD}
PKG=packaging/deb

upstream=$(sed -n 's/.*kCordonVersion = "\([^"]*\)";.*/\1/p' userspace/daemon/daemon.h)
[ -n "$upstream" ] || { echo "build-deb: no kCordonVersion in userspace/daemon/daemon.h" >&2; exit 1; }
version=${DEB_VERSION:-$upstream-1}
dpkg --validate-version "$version"
arch=$(dpkg --print-architecture)

# Files and directories the package ships must not depend on the caller's umask; dpkg-deb
# --root-owner-group makes them root's.
umask 022
work=$(mktemp -d "${TMPDIR:-/tmp}/cordon-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
# dpkg-shlibdeps wants the usual layout: debian/control and the package's tree in debian/cordon.
stage=$work/debian/cordon
mkdir -p "$stage"

"$MAKE" --no-print-directory BUILD="$BUILD" install DESTDIR="$stage" PREFIX=/usr >/dev/null

# What dh_strip does, without a -dbgsym package: the build keeps -g, the package need not.
for bin in "$stage/usr/sbin/cordond" "$stage/usr/bin/cordonctl"; do
	strip --remove-section=.comment --remove-section=.note --strip-unneeded "$bin"
done
# Debian compresses manual pages (dh_compress); the unit links README.md, so it stays as it is.
gzip -9n "$stage"/usr/share/man/man*/*

# /etc/cordon/policy.yaml: the embedded default, commented out. The file replaces only what it
# names, so an admin uncomments what they change and keeps every later default for the rest.
install -d "$stage/etc/cordon"
{
	echo "# cordon's policy. cordond runs its embedded default policy, shown below commented out;"
	echo "# what this file names replaces the default, the rest keeps it. Uncomment and change what"
	echo "# you need, check with \`cordond --check-config\`, apply with \`systemctl reload cordon\`."
	echo "# Reference: /usr/share/doc/cordon/README.md (The policy file)."
	echo "#"
	sed -e 's/^/# /' -e 's/^# $/#/' userspace/config/default_policy.yaml
} >"$stage/etc/cordon/policy.yaml"

install -m 0644 "$PKG/copyright" "$stage/usr/share/doc/cordon/copyright"
# The changelog's first entry must be this version: a build with another DEB_VERSION gets its own.
changelog=$work/changelog
if [ "$(dpkg-parsechangelog -l "$PKG/changelog" -S Version)" != "$version" ]; then
	maintainer=$(sed -n 's/^Maintainer: //p' "$PKG/control.in")
	when=$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")
	{
		printf 'cordon (%s) bookworm; urgency=medium\n\n' "$version"
		printf '  * Built from the cordon %s source tree with DEB_VERSION=%s.\n\n' "$upstream" "$version"
		printf ' -- %s  %s\n\n' "$maintainer" "$when"
		cat "$PKG/changelog"
	} >"$changelog"
else
	cp "$PKG/changelog" "$changelog"
fi
gzip -9n -c "$changelog" >"$stage/usr/share/doc/cordon/changelog.Debian.gz"

# DEBIAN/: control with the shared libraries' packages, maintainer scripts, conffiles, md5sums.
install -d "$stage/DEBIAN"
printf 'Source: cordon\n\nPackage: cordon\nArchitecture: any\n' >"$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O debian/cordon/usr/sbin/cordond debian/cordon/usr/bin/cordonctl |
	sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "build-deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$size/" \
	-e "s/@SHLIBS_DEPENDS@/$shlibs/" "$PKG/control.in" >"$stage/DEBIAN/control"
install -m 0644 "$PKG/conffiles" "$stage/DEBIAN/conffiles"
for script in postinst prerm postrm; do
	install -m 0755 "$PKG/$script" "$stage/DEBIAN/$script"
done
# dpkg keeps its own checksums of conffiles; dh_md5sums leaves them out too.
(cd "$stage" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | LC_ALL=C sort -z |
	xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$stage/DEBIAN/md5sums"

mkdir -p "$DEB_OUT"
deb=$DEB_OUT/cordon_${version#*:}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
