/*
 * cutover_sandbox_rights: the one right a managed PostgreSQL gives its non-superuser admin that
 * PostgreSQL 15 keeps for superusers: creating, altering and dropping subscriptions.
 *
 * RDS lets members of rds_superuser manage subscriptions; PostgreSQL 16 lets members of
 * pg_create_subscription create them. The sandbox's PostgreSQL 15 servers load this module so
 * that their admin roles (not superusers) hold exactly that right and no other: a
 * CREATE/ALTER/DROP SUBSCRIPTION statement issued by a member of the role named by
 * cutover_sandbox.subscription_role runs as the bootstrap superuser; every other statement, and
 * every statement of a role outside it, runs as PostgreSQL decides. The subscription is then
 * owned by the bootstrap superuser, as PostgreSQL 15 requires of a subscription's owner.
 *
 * It also stands for the network between the servers: a managed target (a private RDS in its
 * VPC) cannot be reached from the legacy host. When cutover_sandbox.refuse_peer_cn names a
 * certificate subject, a connection whose TLS client certificate has that common name (the
 * sandbox gives the legacy server's own outgoing connections one, through PGSSLCERT) is refused
 * after authentication with ERRCODE_CONNECTION_FAILURE, as a route that does not exist would
 * fail it; the tool's connections, which present no client certificate, pass.
 *
 * Part of the sandbox only: it is compiled and loaded by cutover-sandbox, never by cutover.
 */
#include "postgres.h"

#include "catalog/pg_authid.h"
#include "fmgr.h"
/*
 * The server headers of a GSSAPI-enabled build include <gssapi/gssapi.h>, which the extracted
 * headers do not carry. Port keeps the same layout either way (a void pointer stands in for the
 * GSSAPI state "to keep struct offsets the same (for extension ABI compatibility)", libpq-be.h),
 * and this module touches none of it.
 */
#undef ENABLE_GSS
#include "libpq/auth.h"
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void _PG_init(void);

static ProcessUtility_hook_type previous_hook = NULL;
static char *subscription_role = NULL;
static ClientAuthentication_hook_type previous_auth_hook = NULL;
static char *refuse_peer_cn = NULL;

static void
route_hook(Port *port, int status)
{
	if (previous_auth_hook)
		previous_auth_hook(port, status);
	if (status == STATUS_OK && refuse_peer_cn != NULL && refuse_peer_cn[0] != '\0' &&
		port->peer_cn != NULL && strcmp(port->peer_cn, refuse_peer_cn) == 0)
		ereport(FATAL,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("no route from %s to this server: the sandbox's target stands for a private RDS, which the legacy host cannot reach",
						port->peer_cn)));
}

static bool
is_subscription_statement(Node *node)
{
	return IsA(node, CreateSubscriptionStmt) || IsA(node, AlterSubscriptionStmt) ||
		IsA(node, DropSubscriptionStmt);
}

static bool
may_manage_subscriptions(void)
{
	Oid role;

	if (subscription_role == NULL || subscription_role[0] == '\0' || superuser())
		return false;
	role = get_role_oid(subscription_role, true);
	return OidIsValid(role) && is_member_of_role(GetUserId(), role);
}

static void
run(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
	ProcessUtilityContext context, ParamListInfo params, QueryEnvironment *queryEnv,
	DestReceiver *dest, QueryCompletion *qc)
{
	if (previous_hook)
		previous_hook(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv,
								dest, qc);
}

static void
rights_hook(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
			ProcessUtilityContext context, ParamListInfo params, QueryEnvironment *queryEnv,
			DestReceiver *dest, QueryCompletion *qc)
{
	Oid saved_user;
	int saved_context;

	if (!is_subscription_statement(pstmt->utilityStmt) || !may_manage_subscriptions())
	{
		run(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
		return;
	}
	GetUserIdAndSecContext(&saved_user, &saved_context);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID, saved_context | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		run(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(saved_user, saved_context);
	}
	PG_END_TRY();
}

void
_PG_init(void)
{
	DefineCustomStringVariable("cutover_sandbox.subscription_role",
							   "Members of this role may create, alter and drop subscriptions.",
							   NULL, &subscription_role, "", PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomStringVariable("cutover_sandbox.refuse_peer_cn",
							   "Connections presenting a client certificate with this common name are refused (no route).",
							   NULL, &refuse_peer_cn, "", PGC_SIGHUP, 0, NULL, NULL, NULL);
	previous_hook = ProcessUtility_hook;
	ProcessUtility_hook = rights_hook;
	previous_auth_hook = ClientAuthentication_hook;
	ClientAuthentication_hook = route_hook;
}
