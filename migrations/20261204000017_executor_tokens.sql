-- An executor token serves one site: it registers one executor there and
-- acts for no other (a token of another site could otherwise re-register
-- an executor and take its work and secrets). Named when the token is
-- made; tokens made before serve the site of the first executor they
-- registered, or are bound by their next registration.
alter table api_token
    add column site_id bigint references site on delete cascade,
    add constraint api_token_site_executor_only check (site_id is null or role = 'executor');
update api_token t set site_id = (
    select e.site_id from executor e where e.token_id = t.token_id order by e.executor_id limit 1
) where t.role = 'executor';
