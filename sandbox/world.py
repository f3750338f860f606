"""A local AWS for the sandbox and the tests: moto's server on 127.0.0.1, seeded with
a VPC, a "compromised" instance with two ENIs and two security groups, and a
bystander in the same subnet."""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import os
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.session

SANDBOX_IMAGE = "ami-12c6146b"  # the one image the local AWS knows (amis.json)
# moto loads thousands of public images into every region at each reset (a seventh of
# the tests' CPU); the sandbox needs one.
AMIS_PATH = os.path.join(os.path.dirname(__file__), "amis.json")
SANDBOX_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# One loader of botocore's service models for every session the sandbox and the tests
# make: a new boto3 Session would parse them again (a tenth of a second of CPU each).
_LOADER: Any = None
_LOCK = threading.Lock()
_CLIENTS: dict[tuple[str, str], Any] = {}


def new_session(cls: type[boto3.session.Session] = boto3.session.Session
                ) -> boto3.session.Session:
    """A boto3 session of its own (credentials, event hooks) that shares the loaded
    service models."""
    global _LOADER
    share_service_models()
    core = botocore.session.Session()
    with _LOCK:
        if _LOADER is None:
            _LOADER = core.get_component("data_loader")
    core.register_component("data_loader", _LOADER)
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        # What botocore's resolver chain would find first (the environment), without
        # building the chain for every session.
        core.set_credentials(os.environ["AWS_ACCESS_KEY_ID"],
                             os.environ["AWS_SECRET_ACCESS_KEY"],
                             os.environ.get("AWS_SESSION_TOKEN"))
    return cls(botocore_session=core)


def client(service: str, region: str = "us-east-1") -> Any:
    """A client for the sandbox's own look-ups (boto3 clients are thread-safe), made once
    per service and region, against AWS_ENDPOINT_URL as it was then."""
    with _LOCK:
        found = _CLIENTS.get((service, region))
    if found is None:
        found = new_session().client(service, region_name=region)
        with _LOCK:
            _CLIENTS[(service, region)] = found
    return found



def _cache_moto_lookups() -> None:
    """moto's server lists its package directory and inspects a response class's methods
    on every request (a tenth of its CPU in the tests); neither changes while it runs."""
    import moto.backends
    import moto.core.responses

    modules = tuple(moto.backends.list_of_moto_modules())
    moto.backends.list_of_moto_modules = lambda: modules
    inspect_methods = moto.core.responses.method_names_from_class
    moto.core.responses.method_names_from_class = functools.cache(  # type: ignore[assignment]
        lambda clazz: frozenset(inspect_methods(clazz)))


def share_service_models() -> None:
    """Every boto3 client botocore makes builds its own ServiceModel from the (shared)
    JSON, and the first error a new EC2 client parses indexes every shape of EC2's model
    (70 ms); it also builds a client class of one method per operation (EC2: 700), and a
    new session checks the signature of each of its 130 built-in handlers and translates
    their event names. The tests and
    the sandbox make a few thousand clients, one bot after another: here they share one
    ServiceModel and one client class per service model, and each handler's signature and
    event name is checked once. Cordon itself makes its clients once (ClientPool.warm)
    and needs none of this."""
    import botocore.client
    from botocore.model import ServiceModel

    creator: Any = botocore.client.ClientCreator
    if getattr(creator, "_cordon_shared", False):
        return
    made: dict[tuple[str, int], tuple[Any, ServiceModel]] = {}

    def load(self: Any, service_name: str, api_version: str | None = None) -> ServiceModel:
        document = self._loader.load_service_model(service_name, "service-2",
                                                   api_version=api_version)
        key = (service_name, id(document))
        with _LOCK:
            found = made.get(key)
            if found is None or found[0] is not document:
                found = made[key] = (document, ServiceModel(document,
                                                             service_name=service_name))
        return found[1]

    creator._load_service_model = load

    # The class is what the model makes, with what the `creating-client-class` handlers
    # add: the same boto3 ones in every session here (no test hooks that event).
    classes: dict[tuple[str, int], Any] = {}
    make_class = creator._create_client_class

    def client_class(self: Any, service_name: str, service_model: ServiceModel) -> Any:
        key = (service_name, id(service_model))
        with _LOCK:
            found = classes.get(key)
        if found is None:
            found = make_class(self, service_name, service_model)
            with _LOCK:
                classes[key] = found
        return found

    creator._create_client_class = client_class
    import botocore.compat
    import botocore.hooks

    checked = functools.lru_cache(maxsize=4096)(botocore.compat.accepts_kwargs)

    def accepts_kwargs(func: Any) -> bool:
        try:
            return bool(checked(func))
        except TypeError:  # a bound method of an unhashable object
            return bool(botocore.compat.accepts_kwargs(func))

    botocore.hooks.accepts_kwargs = accepts_kwargs

    # Each session's event aliaser caches the names it has translated; with botocore's
    # own aliases (every session here) the translations are the same: one cache.
    aliaser: Any = botocore.hooks.EventAliaser
    start = aliaser.__init__
    shared: dict[str, str] = {}

    def init(self: Any, event_emitter: Any, event_aliases: Any = None) -> None:
        start(self, event_emitter, event_aliases)
        if event_aliases is None:
            self._alias_name_cache = shared

    aliaser.__init__ = init
    creator._cordon_shared = True


# APIs moto has no model of, by their JSON protocol target.
NOT_MODELLED = {"com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents":
                "CloudTrail LookupEvents"}


def _one_at_a_time(app: Any) -> Any:
    """moto's backends are plain dicts, not made for concurrent requests: a describe while
    another thread adds a tag can fail with an HTML 500 that AWS never sends. Requests
    are served one at a time, except SQS's, whose long polls wait inside the request."""
    lock = threading.Lock()

    def serve(environ: dict[str, Any], start_response: Any) -> Any:
        target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
        if target in NOT_MODELLED:
            # moto answers an API it does not model with a 500, which every client rightly
            # retries for seconds: the local AWS says at once that it does not have it.
            body = json.dumps({"__type": "UnsupportedOperationException",
                               "message": f"{NOT_MODELLED[target]} is not modelled by "
                                          "the local AWS (moto)"}).encode()
            start_response("400 Bad Request", [("Content-Type", "application/x-amz-json-1.1"),
                                               ("Content-Length", str(len(body)))])
            return [body]
        if target.startswith("AmazonSQS."):
            return app(environ, start_response)
        with lock:
            return list(app(environ, start_response))

    return serve


class LocalAws:
    """moto's server in a thread. boto3 reaches it through AWS_ENDPOINT_URL."""

    def __init__(self) -> None:
        os.environ.setdefault("MOTO_AMIS_PATH", AMIS_PATH)
        from moto.moto_server import threaded_moto_server
        from moto.server import ThreadedMotoServer

        _cache_moto_lookups()
        share_service_models()
        if not getattr(threaded_moto_server, "_cordon_serialised", False):
            dispatcher = threaded_moto_server.DomainDispatcherApplication
            setattr(threaded_moto_server, "DomainDispatcherApplication",  # noqa: B010
                    lambda create: _one_at_a_time(dispatcher(create)))
            setattr(threaded_moto_server, "_cordon_serialised", True)  # noqa: B010
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def start(self) -> LocalAws:
        # One access-log line per AWS call would drown everything else.
        # moto answers APIs it does not model (e.g. console screenshots) with a 500 and a
        # logged traceback; the caller reports those itself.
        logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def use(self) -> None:
        """Point this process's boto3 at the local AWS (never at a real account)."""
        os.environ.update(SANDBOX_ENV)
        os.environ["AWS_ENDPOINT_URL"] = self.url

    def reset(self) -> None:
        req = urllib.request.Request(self.url + "/moto-api/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=10).read()

    def stop(self) -> None:
        self._server.stop()


class ProxiedSession(boto3.session.Session):
    """A boto3 session whose clients speak to `endpoint` (the fault layer in front of
    the local AWS) instead of AWS_ENDPOINT_URL."""

    endpoint = ""

    def client(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("endpoint_url", self.endpoint)
        return super().client(*args, **kwargs)


def proxied_session(endpoint: str) -> boto3.session.Session:
    session = new_session(ProxiedSession)
    assert isinstance(session, ProxiedSession)
    session.endpoint = endpoint
    return session


@dataclass
class World:
    region: str
    vpc_id: str
    subnet_id: str
    instance_id: str
    bystander_id: str
    web_group: str
    mgmt_group: str
    second_eni: str


def _clients(session: boto3.session.Session | None, region: str, *services: str) -> list[Any]:
    """The session's clients, or (no session) the shared ones of `client`."""
    if session is None:
        return [client(s, region) for s in services]
    return [session.client(s, region_name=region) for s in services]


def seed(region: str = "us-east-1", session: boto3.session.Session | None = None) -> World:
    ec2, iam = _clients(session, region, "ec2", "iam")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    ec2.create_tags(Resources=[vpc], Tags=[{"Key": "Name", "Value": "prod"}])
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24")["Subnet"]["SubnetId"]
    web = ec2.create_security_group(GroupName="web", Description="web tier", VpcId=vpc)["GroupId"]
    mgmt = ec2.create_security_group(GroupName="mgmt", Description="ssh from the bastion",
                                     VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=web, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    # A tracked connection's rule: a specific source, the kind that survives rule removal.
    ec2.authorize_security_group_ingress(GroupId=mgmt, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": "203.0.113.7/32"}]}])
    role_doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action":
                "sts:AssumeRole", "Principal": {"Service": "ec2.amazonaws.com"}}]}
    try:
        iam.create_role(RoleName="web-prod", AssumeRolePolicyDocument=json.dumps(role_doc))
        profile = iam.create_instance_profile(InstanceProfileName="web-prod")
        iam.add_role_to_instance_profile(InstanceProfileName="web-prod", RoleName="web-prod")
        profile_arn = profile["InstanceProfile"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        profile_arn = iam.get_instance_profile(InstanceProfileName="web-prod")[
            "InstanceProfile"]["Arn"]
    image = SANDBOX_IMAGE
    # Groups are given per network interface, as AWS keeps them. (moto would otherwise
    # also hold them on the instance and add them back to every ENI it describes.)
    instance = ec2.run_instances(
        ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.large",
        NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet, "Groups": [web, mgmt]}],
        IamInstanceProfile={"Arn": profile_arn},
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": "Name", "Value": "web-prod-3"}]}],
    )["Instances"][0]["InstanceId"]
    eni = ec2.create_network_interface(SubnetId=subnet, Groups=[mgmt],
                                       Description="web-prod-3 admin")["NetworkInterface"]
    ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                 InstanceId=instance, DeviceIndex=1)
    bystander = ec2.run_instances(
        ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.medium",
        NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet, "Groups": [web]}],
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": "Name", "Value": "billing-api-1"}]}],
    )["Instances"][0]["InstanceId"]
    return World(region, vpc, subnet, instance, bystander, web, mgmt,
                 eni["NetworkInterfaceId"])


def add_instances(world: World, count: int, name: str = "worker",
                  session: boto3.session.Session | None = None,
                  tags: dict[str, str] | None = None) -> list[str]:
    """`count` more instances like the compromised one (its subnet, its role, two ENIs:
    web+mgmt, and mgmt) — a worm's reach."""
    ec2, iam = _clients(session, world.region, "ec2", "iam")
    profile = iam.get_instance_profile(InstanceProfileName="web-prod")["InstanceProfile"]["Arn"]
    # Addresses given, not left to moto, which may hand out one already in use (AWS never
    # does): the next free ones from .100 of the subnet.
    subnet = ec2.describe_subnets(SubnetIds=[world.subnet_id])["Subnets"][0]
    net = ipaddress.ip_network(subnet["CidrBlock"])
    used = {a["PrivateIpAddress"] for e in ec2.describe_network_interfaces(Filters=[
        {"Name": "subnet-id", "Values": [world.subnet_id]}])["NetworkInterfaces"]
        for a in e.get("PrivateIpAddresses", [])}
    free = (str(ip) for ip in list(net.hosts())[99:] if str(ip) not in used)
    ids = []
    for n in range(count):
        # One launch each: moto gives the profile to the first instance of a launch only.
        instance = ec2.run_instances(
            ImageId=SANDBOX_IMAGE, MinCount=1, MaxCount=1, InstanceType="t3.small",
            NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": world.subnet_id,
                                "Groups": [world.web_group, world.mgmt_group],
                                "PrivateIpAddress": next(free)}],
            IamInstanceProfile={"Arn": profile},
            TagSpecifications=[{"ResourceType": "instance", "Tags": [
                {"Key": "Name", "Value": f"{name}-{n + 1}"},
                *({"Key": k, "Value": v} for k, v in (tags or {}).items())]}],
        )["Instances"][0]["InstanceId"]
        eni = ec2.create_network_interface(SubnetId=world.subnet_id, Groups=[world.mgmt_group],
                                           Description=f"{name}-{n + 1} admin",
                                           PrivateIpAddress=next(free))
        ec2.attach_network_interface(
            NetworkInterfaceId=eni["NetworkInterface"]["NetworkInterfaceId"],
            InstanceId=instance, DeviceIndex=1)
        ids.append(instance)
    return ids


def groups_by_eni(instance_id: str, region: str = "us-east-1") -> dict[str, list[str]]:
    """Each ENI's security groups, as `name (id)`."""
    ec2 = client("ec2", region)
    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {
        e["NetworkInterfaceId"]: [f"{g['GroupName']} ({g['GroupId']})" for g in e["Groups"]]
        for e in sorted(inst["NetworkInterfaces"],
                        key=lambda e: e.get("Attachment", {}).get("DeviceIndex", 0))
    }


def group_rules(group_id: str, region: str = "us-east-1") -> tuple[list[Any], list[Any]]:
    ec2 = client("ec2", region)
    g = ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    return g.get("IpPermissions", []), g.get("IpPermissionsEgress", [])


@dataclass
class Fleet:
    asg: str
    target_group: str
    classic_elb: str


def join_fleet(world: World, session: boto3.session.Session | None = None) -> Fleet:
    """Put the compromised instance where production instances live: an Auto Scaling
    group, an ALB target group and a classic load balancer."""
    region = world.region
    ec2, autoscaling, elbv2, elb = _clients(session, region, "ec2", "autoscaling", "elbv2",
                                            "elb")
    ec2.create_launch_template(LaunchTemplateName="web-prod", LaunchTemplateData={
        "ImageId": SANDBOX_IMAGE, "InstanceType": "t3.large"})
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="web-prod-asg", LaunchTemplate={"LaunchTemplateName": "web-prod"},
        MinSize=0, MaxSize=4, DesiredCapacity=0, VPCZoneIdentifier=world.subnet_id)
    autoscaling.attach_instances(InstanceIds=[world.instance_id],
                                 AutoScalingGroupName="web-prod-asg")
    tg = elbv2.create_target_group(Name="web-prod", Protocol="HTTP", Port=80,
                                   VpcId=world.vpc_id, TargetType="instance")
    tg_arn = tg["TargetGroups"][0]["TargetGroupArn"]
    elbv2.register_targets(TargetGroupArn=tg_arn, Targets=[{"Id": world.instance_id,
                                                            "Port": 8080}])
    elb.create_load_balancer(LoadBalancerName="web-legacy", Subnets=[world.subnet_id],
                             Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80,
                                         "InstancePort": 8080}])
    elb.register_instances_with_load_balancer(LoadBalancerName="web-legacy",
                                              Instances=[{"InstanceId": world.instance_id}])
    return Fleet("web-prod-asg", tg_arn, "web-legacy")


def describe_containment(world: World, fleet: Fleet, incident_id: str) -> dict[str, Any]:
    """What the sandbox checks after a containment, read back from AWS."""
    ec2, asg, elbv2, elb = _clients(None, world.region, "ec2", "autoscaling", "elbv2", "elb")
    inst = ec2.describe_instances(InstanceIds=[world.instance_id])[
        "Reservations"][0]["Instances"][0]
    in_asg = asg.describe_auto_scaling_instances(InstanceIds=[world.instance_id])[
        "AutoScalingInstances"]
    health = elbv2.describe_target_health(
        TargetGroupArn=fleet.target_group)["TargetHealthDescriptions"]
    clb = elb.describe_load_balancers(
        LoadBalancerNames=[fleet.classic_elb])["LoadBalancerDescriptions"][0]["Instances"]
    assoc = ec2.describe_iam_instance_profile_associations(Filters=[
        {"Name": "instance-id", "Values": [world.instance_id]},
        {"Name": "state", "Values": ["associated"]}])["IamInstanceProfileAssociations"]
    incident = [{"Name": "tag:cordon:incident", "Values": [incident_id]}]
    snapped = {s["VolumeId"] for s in ec2.describe_snapshots(
        OwnerIds=["self"], Filters=incident)["Snapshots"]}
    volumes = {m["Ebs"]["VolumeId"] for m in inst["BlockDeviceMappings"]}
    images = ec2.describe_images(Owners=["self"], Filters=incident)["Images"]
    protection = ec2.describe_instance_attribute(
        InstanceId=world.instance_id, Attribute="disableApiTermination")
    return {
        "in_fleet": bool(in_asg) or any(
            d["TargetHealth"]["State"] not in ("draining", "unused") for d in health) or bool(clb),
        "profile": [a["IamInstanceProfile"]["Arn"] for a in assoc],
        "termination_protection": protection["DisableApiTermination"]["Value"] is True,
        "evidence_complete": bool(volumes) and volumes <= snapped and len(images) == 1,
    }


@dataclass
class Network:
    igw: str
    public_table: str
    main_table: str
    other_subnet: str
    other_instance: str
    neighbour: str


def add_network(world: World, session: boto3.session.Session | None = None) -> Network:
    """An internet gateway with default routes, a second subnet with its own instance,
    and one more instance beside the compromised one."""
    (ec2,) = _clients(session, world.region, "ec2")
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=world.vpc_id)
    public = ec2.create_route_table(VpcId=world.vpc_id)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=public, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    ec2.create_route(RouteTableId=public, DestinationIpv6CidrBlock="::/0", GatewayId=igw)
    ec2.associate_route_table(RouteTableId=public, SubnetId=world.subnet_id)
    main = ec2.describe_route_tables(Filters=[
        {"Name": "vpc-id", "Values": [world.vpc_id]},
        {"Name": "association.main", "Values": ["true"]}])["RouteTables"][0]["RouteTableId"]
    ec2.create_route(RouteTableId=main, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    other = ec2.create_subnet(VpcId=world.vpc_id, CidrBlock="10.20.2.0/24")["Subnet"]["SubnetId"]

    def launch(name: str, subnet: str) -> str:
        return str(ec2.run_instances(
            ImageId=SANDBOX_IMAGE, MinCount=1, MaxCount=1, InstanceType="t3.small",
            NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet,
                                "Groups": [world.web_group]}],
            TagSpecifications=[{"ResourceType": "instance",
                                "Tags": [{"Key": "Name", "Value": name}]}],
        )["Instances"][0]["InstanceId"])

    return Network(igw, public, main, other, launch("db-1", other),
                   launch("web-prod-4", world.subnet_id))


def add_nat_gateway(world: World, session: boto3.session.Session | None = None
                    ) -> dict[str, str]:
    """The commonest production layout: the instance's subnet routes 0.0.0.0/0 to a NAT
    gateway in a public subnet. Every subnet keeps the VPC's default ACL. Returns the
    public subnet, the NAT gateway and that subnet's ACL."""
    (ec2,) = _clients(session, world.region, "ec2")
    public = ec2.create_subnet(VpcId=world.vpc_id, CidrBlock="10.20.9.0/24")["Subnet"]["SubnetId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=world.vpc_id)
    eip = ec2.allocate_address(Domain="vpc")["AllocationId"]
    nat = ec2.create_nat_gateway(SubnetId=public, AllocationId=eip)["NatGateway"]["NatGatewayId"]
    private = ec2.create_route_table(VpcId=world.vpc_id)["RouteTable"]["RouteTableId"]
    ec2.create_route(RouteTableId=private, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat)
    ec2.associate_route_table(RouteTableId=private, SubnetId=world.subnet_id)
    (acl,) = ec2.describe_network_acls(Filters=[
        {"Name": "association.subnet-id", "Values": [public]}])["NetworkAcls"]
    return {"public": public, "nat": nat, "acl": acl["NetworkAclId"]}


def seed_leaked_key(world: World, session: boto3.session.Session | None = None
                    ) -> tuple[str, str]:
    """An IAM user with console access, a policy and two access keys, the first of
    which leaked: (user, leaked key id)."""
    (iam,) = _clients(session, world.region, "iam")
    iam.create_user(UserName="deploy-bot")
    iam.create_login_profile(UserName="deploy-bot", Password="Correct-Horse-9!")
    iam.put_user_policy(UserName="deploy-bot", PolicyName="s3-deploy", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",
                                                 "Resource": "*"}]}))
    leaked = iam.create_access_key(UserName="deploy-bot")["AccessKey"]["AccessKeyId"]
    iam.create_access_key(UserName="deploy-bot")
    return "deploy-bot", str(leaked)


def key_status(user: str, key_id: str) -> str:
    iam = client("iam")
    keys = iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
    return str(next(k["Status"] for k in keys if k["AccessKeyId"] == key_id))


def network_state(world: World) -> dict[str, Any]:
    """What the subnet- and VPC-wide playbooks change: the subnet's network ACL and route
    table, and every route of the VPC that leads to an internet gateway."""
    ec2 = client("ec2", world.region)
    vpc = [{"Name": "vpc-id", "Values": [world.vpc_id]}]
    acl = next(a["NetworkAclId"] for a in ec2.describe_network_acls(Filters=vpc)["NetworkAcls"]
               for assoc in a.get("Associations", []) if assoc["SubnetId"] == world.subnet_id)
    tables = ec2.describe_route_tables(Filters=vpc)["RouteTables"]
    own = next((t for t in tables for a in t.get("Associations", [])
                if a.get("SubnetId") == world.subnet_id), None)
    table = own or next(t for t in tables for a in t.get("Associations", []) if a.get("Main"))
    to_igw = sorted(f"{t['RouteTableId']} "
                    f"{r.get('DestinationCidrBlock') or r.get('DestinationIpv6CidrBlock')}"
                    for t in tables for r in t.get("Routes", [])
                    if str(r.get("GatewayId", "")).startswith("igw-"))
    return {"acl": acl, "route_table": table["RouteTableId"],
            "routes": sorted(str(r.get("GatewayId", "local")) for r in table.get("Routes", [])),
            "routes_to_igw": to_igw}
