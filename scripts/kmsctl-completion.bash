# bash completion for kmsctl (docs/KMSCTL.md).
#   source scripts/kmsctl-completion.bash
# or install it as /usr/share/bash-completion/completions/kmsctl.
# Static lists: keep them in step with kms/cli/*.c.

_kmsctl()
{
	local cur prev words cword
	if declare -F _init_completion >/dev/null 2>&1; then
		_init_completion || return
	else
		cur=${COMP_WORDS[COMP_CWORD]}
		prev=${COMP_WORDS[COMP_CWORD-1]}
		words=("${COMP_WORDS[@]}")
		cword=$COMP_CWORD
	fi

	local globals="--addr --ca-cert --token-file --config --format --timeout --client-cert --client-key --mfa --help"
	local commands="status tenant principal token key datakey encrypt decrypt rewrap seal open mfa audit approval break-glass report policy backup"

	# option values
	case $prev in
	--ca-cert|--token-file|--config|--in|--out|--aad-file|--batch|--pubkey|--state|--client-cert|--client-key|--cert)
		COMPREPLY=($(compgen -f -- "$cur"))
		[ "$prev" = --token-file ] || [ "$prev" = --in ] || [ "$prev" = --out ] ||
			[ "$prev" = --aad-file ] || [ "$prev" = --batch ] &&
			COMPREPLY+=($(compgen -W "-" -- "$cur"))
		return
		;;
	--format) COMPREPLY=($(compgen -W "table json" -- "$cur")); return ;;
	--retention) COMPREPLY=($(compgen -W "phi non-phi" -- "$cur")); return ;;
	--role) COMPREPLY=($(compgen -W "admin service auditor" -- "$cur")); return ;;
	--legal-hold|--deletion-allowed) COMPREPLY=($(compgen -W "true false" -- "$cur")); return ;;
	--verdict) COMPREPLY=($(compgen -W "justified unjustified" -- "$cur")); return ;;
	--bits) COMPREPLY=($(compgen -W "128 256 512" -- "$cur")); return ;;
	--outcome) COMPREPLY=($(compgen -W "allow deny error" -- "$cur")); return ;;
	--operation)
		COMPREPLY=($(compgen -W "datakey encrypt decrypt rewrap 'key.*' key.create key.read key.list
			key.rotate key.config key.revoke key.restore key.history key.legal_hold
			key.version.disable key.version.enable key.version.schedule_destroy
			key.version.cancel_destroy key.version.destroy key.version.receipt tenant.create
			tenant.read tenant.list tenant.config principal.create principal.read principal.list
			principal.cert.add principal.cert.list principal.cert.revoke
			token.create token.revoke token.lookup_self token.lookup_accessor policy.read policy.write audit.hash sys.metrics
			sys.compliance sys.backup sys.restore mfa.enroll mfa.confirm mfa.status mfa.verify mfa.unlock mfa.reset
			approval.list approval.read approval.approve approval.deny approval.expire breakglass.activate
			breakglass.list breakglass.review audit.checkpoint audit.recovered" -- "$cur"))
		return
		;;
	--type) COMPREPLY=($(compgen -W "aes256-gcm96" -- "$cur")); return ;;
	--chunk-size) COMPREPLY=($(compgen -W "65536 1048576" -- "$cur")); return ;;
	--addr|--timeout|--ttl|--days|--reason|--context|--key-version|--retention-days|\
	--min-destroy-wait-days|--min-decryption-version|--min-encryption-version|--auto-rotate-period|\
	--tenant|--principal|--key|--version|--status|--request-id|--node|--from|--to|--context-hash|--note|--rate|\
	--spki|--subject)
		return
		;;
	esac

	# the command path so far, global options and their values left out
	local path=() i w skip=0
	for ((i = 1; i < cword; i++)); do
		w=${words[i]}
		if ((skip)); then skip=0; continue; fi
		case $w in
		--addr|--ca-cert|--token-file|--config|--format|--timeout|--client-cert|--client-key) skip=1; continue ;;
		-*) continue ;;
		esac
		path+=("$w")
	done

	local subs="" opts=""
	case "${path[0]}" in
	"") subs=$commands ;;
	status) ;;
	tenant)
		subs="create read list config"
		case "${path[1]}" in
		create) opts="--retention" ;;
		config) opts="--retention-days --min-destroy-wait-days --legal-hold" ;;
		esac
		;;
	mfa) subs="enroll confirm status verify unlock reset" ;;
	principal)
		subs="create read list cert-add cert-list cert-revoke"
		case "${path[1]}" in
		create) opts="--role --tenant" ;;
		cert-add|cert-revoke) opts="--cert --spki --subject" ;;
		esac
		;;
	token)
		subs="create revoke lookup"
		[ "${path[1]}" = create ] && opts="--ttl"
		;;
	key)
		subs="create read list rotate config revoke restore history legal-hold trim version"
		case "${path[1]}" in
		create) opts="--type" ;;
		trim) opts="--min-available-version --days --reason" ;;
		config) opts="--min-decryption-version --min-encryption-version --deletion-allowed --auto-rotate-period --reason" ;;
		revoke|restore) opts="--reason" ;;
		legal-hold)
			opts="--reason"
			((${#path[@]} == 4)) && { COMPREPLY=($(compgen -W "on off" -- "$cur")); return; }
			;;
		version)
			subs="disable enable schedule-destroy cancel-destroy"
			case "${path[2]}" in
			schedule-destroy) opts="--days --reason" ;;
			disable|enable|cancel-destroy) opts="--reason" ;;
			esac
			;;
		esac
		;;
	approval)
		subs="list show approve deny"
		case "${path[1]}" in approve|deny) opts="--note" ;; esac
		;;
	break-glass)
		subs="activate list review"
		case "${path[1]}" in
		activate) opts="--reason --key --ttl" ;;
		review) opts="--verdict --note" ;;
		esac
		;;
	datakey) opts="--wrapped --bits --context --aad-file" ;;
	encrypt) opts="--in --key-version --context --aad-file" ;;
	decrypt) opts="--out --batch --context --aad-file" ;;
	rewrap)
		opts="--key-version --batch --context --aad-file --tenant --key --in --out --sealed
			--rate --state --fail-fast"
		# sealed files after --sealed
		[[ $cur == -* ]] || COMPREPLY=($(compgen -f -- "$cur"))
		;;
	seal|open)
		# IN and OUT: files, or - for stdin/stdout
		[ "${path[0]}" = seal ] && opts="--tenant --key --context --chunk-size"
		[[ $cur == -* ]] || { COMPREPLY=($(compgen -f -- "$cur") $(compgen -W "-" -- "$cur")); return; }
		;;
	backup) opts="--out" ;;
	policy)
		subs="read write check default"
		# write and check take a file, or - for stdin
		case "${path[1]}" in
		write|check) [[ $cur == -* ]] || { COMPREPLY=($(compgen -f -- "$cur") $(compgen -W "-" -- "$cur")); return; } ;;
		esac
		;;
	audit)
		subs="verify search report hash"
		case "${path[1]}" in
		verify) opts="--pubkey --partial"; COMPREPLY=($(compgen -f -- "$cur")) ;;
		search)
			opts="--principal --tenant --key --version --operation --outcome --status
				--request-id --node --from --to --context --context-hash --lenient"
			COMPREPLY=($(compgen -f -- "$cur"))
			;;
		report)
			subs="access exposure"
			case "${path[2]}" in
			access) opts="--principal --from --to --lenient"; COMPREPLY=($(compgen -f -- "$cur")) ;;
			exposure) opts="--tenant --key --version --from --to --lenient"; COMPREPLY=($(compgen -f -- "$cur")) ;;
			esac
			;;
		esac
		;;
	report)
		subs="compliance"
		[ "${path[1]}" = compliance ] && opts="--out"
		# --format here takes md, json or html
		[ "$prev" = --format ] && { COMPREPLY=($(compgen -W "md json html" -- "$cur")); return; }
		;;
	esac

	if [[ $cur == -* ]]; then
		COMPREPLY+=($(compgen -W "$opts $globals" -- "$cur"))
		return
	fi
	# a subcommand is wanted only right after its group
	case "${path[0]}" in
	"") ;;
	key) [ "${path[1]}" = version ] && ((${#path[@]} == 2)) || ((${#path[@]} == 1)) || subs="" ;;
	audit) [ "${path[1]}" = report ] && ((${#path[@]} == 2)) || ((${#path[@]} == 1)) || subs="" ;;
	*) ((${#path[@]} == 1)) || subs="" ;;
	esac
	[ -n "$subs" ] && COMPREPLY=($(compgen -W "$subs" -- "$cur"))
}

complete -F _kmsctl kmsctl
