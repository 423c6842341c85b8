# shellcheck shell=bash
# Reading the host's apt configuration. Sourced by scripts that need the
# archive the host already uses; the archive's URI is read at run time and
# never written into the project.

# archive_uri SUITE: the URI of the first enabled Debian source of the host
# (deb822 .sources or one-line sources.list) that serves SUITE. Prints
# nothing when no source serves it. Succeeds either way (a missing
# sources.list is normal and must not trip `set -o pipefail` callers).
archive_uri() {
	local suite=$1
	{
		{ cat /etc/apt/sources.list.d/*.sources || true; } | awk -v want="$suite" '
            /^[ \t]*$/ { if (uri != "" && hit) { print uri; exit } uri = ""; hit = 0; next }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == want) hit = 1 }
            END { if (uri != "" && hit) print uri }'
		{ cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list || true; } |
			awk -v want="$suite" '$1 == "deb" { sub(/\[[^]]*\][ \t]*/, ""); if ($3 == want) print $2 }'
	} 2>/dev/null | head -n 1 || true
}
