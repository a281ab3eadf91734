"""The Auth0 log type catalogue: code, description, category and the old extensions' level.

Generated from shared/auth0/log_types.json (181 codes: Auth0's log schemas, the extension tools and the
2020 docs). Later parts filter by category, and the poller by the extensions' LOG_LEVEL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Category = Literal["failure", "warning", "other"]
CATEGORIES: tuple[Category, ...] = ("failure", "warning", "other")


@dataclass(frozen=True, slots=True)
class LogType:
    code: str
    description: str
    category: Category
    level: int | None


_TABLE: tuple[tuple[str, str, Category, int | None], ...] = (
    ("acls_summary", "Network ACLs summary", "other", None),
    ("actions_execution_failed", "Execution of an Action failed", "failure", None),
    ("acul_sdk_notice", "Advanced Customizations for Universal Login (ACUL) SDK event type", "warning", None),
    ("admin_update_launch", "Auth0 Update Launched", "other", 1),
    ("api_limit", "Rate limit exceeded on Authentication or Management API", "failure", 4),
    ("api_limit_warning", "Rate Limit Warning notice on Authentication or Management API", "warning", None),
    ("appi", "Notice for API Peak Performance Initiated", "other", None),
    ("ciba_exchange_failed", "Failed CIBA Exchange", "failure", None),
    ("ciba_exchange_succeeded", "Successful CIBA Exchange", "other", None),
    ("ciba_start_failed", "Failed CIBA Start", "failure", None),
    ("ciba_start_succeeded", "Successful CIBA Start", "other", None),
    ("cls", "Code or Link Sent for Passwordless Login", "other", 1),
    ("coff", "Connector Offline", "failure", 3),
    ("con", "Connector Online", "other", 1),
    ("connected_accounts_connection_failed", "Failed connected account connection", "failure", None),
    ("connected_accounts_connection_succeeded", "Successful connected account connection", "other", None),
    ("connected_accounts_delete_failed", "Failed connected account delete", "failure", None),
    ("connected_accounts_delete_succeeded", "Successful connected account delete", "other", None),
    ("cs", "Code Sent for Passwordless Login", "other", 1),
    ("custom_domain_verification_failed", "Custom Domain Verification Failed", "failure", None),
    ("depnote", "Deprecation Notice", "warning", 2),
    ("directory_sync_completed", "Inbound Directory Sync", "other", None),
    ("directory_sync_failed", "Inbound directory sync failed", "failure", None),
    ("directory_sync_started", "Inbound directory sync started", "other", None),
    ("du", "Deleted User", "other", 3),
    ("f", "Failed Login (only when not covered by fp/fu)", "failure", 3),
    (
        "failed_on_behalf_of_token_exchange",
        "Failed Exchange via On-Behalf-Of Token Exchange",
        "failure",
        None,
    ),
    ("fapi", "Failed API Operation", "failure", 3),
    ("fc", "Failed by Connector", "failure", 3),
    ("fce", "Failed Change Email", "failure", 3),
    ("fco", "Failed due to CORS", "failure", 3),
    ("fcoa", "Failed Cross-Origin Authentication", "failure", 3),
    ("fcp", "Failed Change Password", "failure", 3),
    ("fcph", "Failed Post Change Password Hook", "failure", 3),
    ("fcpn", "Failed Change Phone Number", "failure", 3),
    ("fcpr", "Failed Change Password Request", "failure", 3),
    ("fcpro", "Failed Connector Provisioning", "failure", 4),
    ("fcu", "Failed Change Username", "failure", 3),
    ("fd", "Failed Delegation", "failure", 3),
    ("fdeac", "Failed Device Confirmation - Device Activation Failure", "failure", None),
    ("fdeaz", "Failed Device Confirmation - Request Failure", "failure", None),
    ("fdecc", "Failed Device Confirmation - User Canceled", "failure", None),
    ("fdeleacft", "Failed to Exchange Delegated Authorization Code for Access Token", "failure", None),
    ("fdelsa", "Failed Delegated Silent Authentication", "failure", None),
    ("fdu", "Failed User Deletion", "failure", 3),
    ("feacft", "Failed Exchange of Authorization Code for Access Token", "failure", 3),
    ("feccft", "Failed Exchange of Access Token for a Client Credentials Grant", "failure", 3),
    ("fecte", "Failed Exchange via Custom Token Exchange", "failure", None),
    ("fede", "Failed Exchange of Device Code for Access Token", "failure", None),
    ("federated_logout_failed", "Failed Federated Logout request", "failure", None),
    ("fens", "Failed Exchange for Native Social Login", "failure", 3),
    ("feoobft", "Failed Exchange of Password and OOB Challenge for Access Token", "failure", 3),
    ("feotpft", "Failed Exchange of Password and OTP Challenge for Access Token", "failure", 3),
    ("fepft", "Failed Exchange of Password for Access Token", "failure", 3),
    ("fepotpft", "Failed Exchange of Passwordless OTP for Access Token", "failure", None),
    ("fercft", "Failed Exchange of Password and MFA Recovery Code for Access Token", "failure", 3),
    ("ferrt", "Failed Exchange of Rotating Refresh Token", "failure", 3),
    ("fertft", "Failed Exchange of Refresh Token for Access Token", "failure", 3),
    ("feta", "Failed Exchange of Refresh Token for Token for 3rd party API", "failure", None),
    ("fi", "failed Invite Accept", "failure", None),
    ("flo", "Failed Logout", "failure", 3),
    ("flows_execution_completed", "Flows Execution Completed", "other", None),
    ("flows_execution_failed", "Flows Execution Failed", "failure", None),
    ("fn", "Failed Notification", "failure", 3),
    ("forms_submission_failed", "Forms Submission Failed", "failure", None),
    ("forms_submission_succeeded", "Forms Submission Succeeded", "other", None),
    ("fp", "Failed Login - Invalid Password", "failure", 3),
    ("fpar", "Failed Push Authorization Request", "failure", None),
    ("fpurh", "Failed Post User Registration Hook", "failure", None),
    ("fs", "Failed Signup", "failure", 3),
    ("fsa", "Failed Silent Auth", "failure", 3),
    ("fscim", "Failed SCIM Operation", "failure", None),
    ("fu", "Failed Login - Invalid username", "failure", 3),
    ("fui", "Failed Users Import", "warning", 2),
    ("fv", "Failed Verification Email", "failure", 3),
    ("fvr", "Failed Verification Email Request", "failure", 3),
    (
        "gd_auth_email_verification",
        "MFA email verification (meaning inferred from code name; schema has no description)",
        "other",
        None,
    ),
    ("gd_auth_failed", "OTP Auth failed", "failure", 3),
    ("gd_auth_rejected", "OTP Auth rejected", "failure", 3),
    ("gd_auth_succeed", "OTP Auth suceed", "other", 1),
    ("gd_enrollment_complete", "Guardian enrollment complete", "other", 1),
    ("gd_module_switch", "Module switch", "other", 1),
    ("gd_otp_rate_limit_exceed", "Too many failures", "warning", 2),
    ("gd_recovery_failed", "Recovery failed", "failure", 3),
    ("gd_recovery_rate_limit_exceed", "Too many failures", "warning", 2),
    ("gd_recovery_succeed", "Recovery succeed", "other", 1),
    ("gd_send_email", "MFA email sent (inferred from code name)", "other", None),
    (
        "gd_send_email_verification",
        "MFA email-verification email sent (inferred from code name)",
        "other",
        None,
    ),
    ("gd_send_pn", "Push notification sent", "other", 1),
    ("gd_send_pn_failure", "Error sending MFA Push Notification", "failure", 3),
    ("gd_send_sms", "SMS Sent", "other", 1),
    ("gd_send_sms_failure", "Error sending MFA SMS", "failure", 3),
    ("gd_send_voice", "Made voice call", "other", 1),
    ("gd_send_voice_failure", "Error making MFA voice call", "failure", 3),
    ("gd_start_auth", "Second factor started", "other", 1),
    ("gd_start_enroll", "Enroll started", "other", 1),
    ("gd_start_enroll_failed", "MFA Enrollment start failed", "failure", 3),
    ("gd_tenant_update", "Guardian tenant update", "other", 1),
    ("gd_unenroll", "Unenroll device account", "other", 1),
    ("gd_update_device_account", "Update device account", "other", 1),
    ("gd_user_delete", "User delete", "other", 1),
    (
        "gd_webauthn_challenge_failed",
        "MFA WebAuthn challenge failed (inferred from code name)",
        "failure",
        None,
    ),
    (
        "gd_webauthn_enrollment_failed",
        "MFA WebAuthn enrollment failed (inferred from code name)",
        "failure",
        None,
    ),
    (
        "idjag_exchange_failed",
        "Failed Exchange of Identity Assertion Authorization Grant JWT for Access Token",
        "failure",
        None,
    ),
    (
        "idjag_exchange_succeeded",
        "Successful Exchange of Identity Assertion Authorization Grant JWT for Access Token",
        "other",
        None,
    ),
    (
        "jwt_bearer_exchange_failed",
        "Failed Exchange of JWT Bearer Assertion for Access Token",
        "failure",
        None,
    ),
    ("kms_key_management_failure", "Failed KMS API operation", "failure", None),
    ("kms_key_management_success", "Successful KMS API operation", "other", None),
    ("kms_key_state_changed", "KMS key state change", "other", None),
    ("limit_delegation", "Blocked Account - Too many Delegation requests", "failure", 4),
    ("limit_mu", "Blocked Account - Too many attempts or signups", "failure", 4),
    ("limit_phone", "Blocked Phone Delivery - Too many phone delivery attempts", "failure", None),
    ("limit_sul", "Blocked Account - Logins per IP", "failure", None),
    (
        "limit_ui",
        "Too Many Calls to /userinfo (no longer emitted; /userinfo throttling now logs api_limit - auth0/docs PR #7878)",
        "failure",
        4,
    ),
    ("limit_wc", "Blocked Account - Failed Logins", "failure", 4),
    ("mfar", "MFA Required", "other", None),
    ("mgmt_api_read", "Management API read (GET) - only emitted when a secret is returned", "other", None),
    (
        "my_account_authentication_method_failed",
        "Failed authentication method operation in My Account API",
        "failure",
        None,
    ),
    (
        "my_account_authentication_method_succeeded",
        "Successful authentication method operation in My Account API",
        "other",
        None,
    ),
    ("oidc_backchannel_logout_failed", "Failed OIDC Back-Channel Logout request", "failure", None),
    ("oidc_backchannel_logout_succeeded", "Successful OIDC Back-Channel Logout request", "other", None),
    ("organization_member_added", "Organization Member Added Operation *", "other", None),
    ("passkey_challenge_failed", "A native passkey challenge failed", "failure", None),
    ("passkey_challenge_started", "A native passkey challenge was successfully initiated", "other", None),
    ("pla", "Pre-Login Assessment", "other", None),
    ("pwd_leak", "Breached Password - Login", "failure", 3),
    ("reset_pwd_leak", "Breached Password - Reset", "failure", None),
    ("resource_cleanup", "Refresh Token Excess Warning", "warning", None),
    ("rich_consents_access_error", "Failed get rich consent record request", "failure", None),
    ("s", "Successful Login", "other", 1),
    ("sapi", "Successful Management API operation (only POST/DELETE/PATCH/PUT)", "other", 1),
    ("sce", "Successful Change Email", "other", 1),
    ("scoa", "Successful Cross-Origin Authentication", "other", 1),
    ("scp", "Successful Change Password", "other", 1),
    ("scph", "Success Post Change Password Hook", "other", 1),
    ("scpn", "Successful Change Phone Number", "other", 1),
    ("scpr", "Successful Change Password Request", "other", 1),
    ("scu", "Successful Change Username", "other", 1),
    ("scv", "Successful Credential Validation", "other", None),
    ("sd", "Successful Delegation", "other", 1),
    ("sdel", "Successful Delegated Login", "other", None),
    ("sdeleacft", "Successful Exchange of Delegated Authorization Code for Access Token", "other", None),
    ("sdelsa", "Successful Delegated Silent Authentication", "other", None),
    ("sdu", "Successful User Deletion", "other", 1),
    ("seacft", "Successful Exchange of Authorization Code for Access Token", "other", 1),
    ("seccft", "Successful Exchange of Access Token for a Client Credentials Grant", "other", 1),
    ("secte", "Successful Exchange via Custom Token Exchange", "other", None),
    ("sede", "Successful Exchange of Device Code for Access Token", "other", None),
    ("sens", "Successful Exchange Native Login", "other", 1),
    ("seoobft", "Successful Exchange of Password and OOB Challenge for Access Token", "other", 1),
    ("seotpft", "Successful Exchange of Password and OTP Challenge for Access Token", "other", 1),
    ("sepft", "Successful Exchange of Password for Access Token", "other", 1),
    ("sepkoobft", "Successful Exchange of Passkey and OOB Challenge for Access Token", "other", None),
    ("sepkotpft", "Successful Exchange of Passkey and OTP Challenge for Access Token", "other", None),
    ("sepkrcft", "Successful Exchange of Passkey and MFA Recovery Code for Access Token", "other", None),
    ("sercft", "Successful Exchange of Password and MFA Recovery Code for Access Token", "other", 1),
    ("sertft", "Successful Exchange of Refresh Token for Access Token", "other", 1),
    ("seta", "Successful Exchange of Refresh Token for Token for 3rd party API", "other", None),
    ("si", "Successful Invite Accept", "other", None),
    ("slo", "Successful Logout", "other", 1),
    ("srrt", "Successful Refresh Token Revocation", "other", None),
    ("ss", "Successful Signup", "other", 1),
    ("ss_sso_failure", "Failed SS-SSO Operation", "failure", None),
    ("ss_sso_info", "Information from an SS-SSO Operation", "other", None),
    ("ss_sso_success", "Successful SS-SSO Operation", "other", None),
    ("ssa", "Successful Silent Auth", "other", 1),
    ("sscim", "Successful SCIM Operation", "other", None),
    (
        "success_on_behalf_of_token_exchange",
        "Successful Exchange via On-Behalf-Of Token Exchange",
        "other",
        None,
    ),
    ("sui", "Successful Users Import", "other", 1),
    ("sv", "Successful Verification Email", "other", 1),
    ("svr", "Successful Verification Email Request", "other", 1),
    ("sys_os_update_end", "Auth0 OS Update Ended", "other", 1),
    ("sys_os_update_start", "Auth0 OS Update Started", "other", 1),
    ("sys_update_end", "Auth0 Update Ended", "other", 1),
    ("sys_update_start", "Auth0 Update Started", "other", 1),
    ("ublkdu", "User login block released", "other", 1),
    ("universal_logout_failed", "Failed Universal Logout request", "failure", None),
    ("universal_logout_succeeded", "Successful Universal Logout request", "other", None),
    ("w", "Warning during login", "warning", 2),
    ("wn", "Warning Notifications", "warning", None),
    ("wum", "Warning User Management", "warning", None),
)

LOG_TYPES: dict[str, LogType] = {code: LogType(code, desc, cat, lvl) for code, desc, cat, lvl in _TABLE}


def category_of(code: str | None) -> Category:
    """The category of a type code; a code Auth0 added after this table is "other"."""
    known = LOG_TYPES.get(code) if code else None
    return known.category if known else "other"


def describe(code: str | None) -> str:
    known = LOG_TYPES.get(code) if code else None
    return known.description if known else (code or "unknown event")


def codes_in(category: Category) -> frozenset[str]:
    return frozenset(t.code for t in LOG_TYPES.values() if t.category == category)


def codes_at_level(level: int) -> frozenset[str]:
    """Codes the old extensions selected for LOG_LEVEL=level (level >= it; 0 and 1 select the same)."""
    return frozenset(t.code for t in LOG_TYPES.values() if t.level is not None and t.level >= level)
